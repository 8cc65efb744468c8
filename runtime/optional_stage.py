"""What the voice and vision services share: a stage that is an extra, never a condition of the kiosk running.

Each service reports ``state`` (``starting``, ``on``, ``off``, ``failed``) and, when off or failed, the reason, on
/healthz; ``failed`` (a device that broke mid-session, a model that would not load) makes the kiosk "degraded".
"""

from __future__ import annotations

from typing import Any


class OptionalStage:
    def __init__(self, config, parts) -> None:
        self.config = config
        self.parts = parts
        self.stage = None
        self.state = "starting"
        self.reason = ""
        self.failed = False

    def base_health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": not self.failed, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out
