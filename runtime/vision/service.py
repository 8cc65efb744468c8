"""Starting the vision stage inside ``storeclerk run``: the camera, the detectors, the stage, its health.

Like voice, the camera is an extra, never a condition: with no ``camera.source`` (the default, this machine,
CI) or a source that cannot work (a GStreamer pipeline on an OpenCV without GStreamer), vision is off, the
reason is on /healthz and in the log, and the kiosk runs on touch and voice. A camera that is configured but
not there yet (a USB camera enumerated after boot, an IP camera rebooting) does not stop start-up: the grabber
keeps retrying and /healthz says ``reconnecting``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtime.optional_stage import OptionalStage

log = logging.getLogger("storeclerk.vision")


class VisionService(OptionalStage):
    def __init__(self, config, parts) -> None:
        super().__init__(config, parts)
        self.parts_loaded: dict[str, str] = {}

    def health(self) -> dict[str, Any]:
        out = self.base_health()
        if self.parts_loaded:
            out["detectors"] = dict(self.parts_loaded)
        if self.stage is not None:
            h = self.stage.health()
            out.update(h, ok=not self.failed and h["ok"])  # a camera unplugged mid-session shows as degraded
        return out

    def _off(self, reason: str) -> None:
        self.state, self.reason = "off", reason
        log.info("vision is off: %s", reason)

    async def run(self) -> None:
        from device.camera import open_camera
        from runtime.errors import ConfigError

        cfg = self.config
        if not cfg.get("camera.enabled"):
            self._off("disabled (camera.enabled: false / --no-camera)")
            return
        source = cfg.get("camera.source")
        if source is None:
            self._off("no camera configured (set camera.source, or run with --camera SOURCE)")
            return
        try:
            camera = await asyncio.to_thread(open_camera, str(source), float(cfg.get("camera.fps")), wait=False)
        except ConfigError as exc:
            self.failed = True
            self._off(exc.message)
            return
        try:
            stage = await asyncio.to_thread(self._build, camera)
        except Exception as exc:  # a detector that will not load: say which, keep the kiosk
            camera.close()
            self.failed = True
            self._off(f"could not load the vision models: {exc}")
            return
        kiosk = self.parts.kiosk
        self.stage, self.state = stage, "on"
        kiosk.vision = stage
        kiosk.view_ttl_s = float(cfg.get("camera.view_ttl_s"))
        try:
            await stage.run()
            self.state, self.reason = "off", "the camera source ended"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed, self.state, self.reason = True, "failed", str(exc)
            log.error("vision stopped: %s", exc)
            kiosk.metrics.inc("storeclerk_stage_errors_total", stage="vision")
        finally:
            kiosk.vision = None
            await asyncio.to_thread(camera.close)

    def _build(self, camera):
        from runtime.vision.perception import Perception
        from runtime.vision.stage import VisionStage

        cfg = self.config
        services = self.parts.services
        recognizer = presence = ocr = None
        if cfg.get("camera.products"):
            try:
                from runtime.vision.products import ProductRecognizer

                recognizer = ProductRecognizer(self.parts.kiosk.classifier.engine)
                self.parts_loaded["products"] = "on"
            except Exception as exc:  # an older bundle without the product model: scanning still works
                self.parts_loaded["products"] = f"off: {exc}"
        if cfg.get("camera.faces"):
            try:
                from runtime.vision.face import FaceDetector, FacePresence

                presence = FacePresence(FaceDetector().load())
                self.parts_loaded["faces"] = "on"
            except Exception as exc:
                self.parts_loaded["faces"] = f"off: {exc}"
        expression = None
        if presence is not None:
            try:
                from runtime.vision.expression import ExpressionReader

                expression = ExpressionReader(self.parts.kiosk.classifier.engine)
                self.parts_loaded["expression"] = "on"
            except Exception as exc:  # a bundle without the expression model: presence still works
                self.parts_loaded["expression"] = f"off: {exc}"
        if cfg.get("camera.ocr"):
            from runtime.vision.ocr import OcrReader

            ocr = OcrReader()  # loads on first use: most customers never show a receipt
            self.parts_loaded["ocr"] = "on demand"
        perception = Perception(lambda: services.kb, services.orders, recognizer=recognizer, presence=presence,
                                ocr=ocr, expression=expression, product_every_s=float(cfg.get("camera.product_every_s")))
        return VisionStage(self.parts.kiosk, camera, perception, repeat_after_s=float(cfg.get("camera.repeat_after_s")),
                           recognized_cards=bool(cfg.get("camera.recognized_cards")), wake_on_face=bool(cfg.get("camera.faces")))
