"""The kiosk's HTTP side: the touchscreen page, ``POST /api/turn``, the ``/ws`` WebSocket, ``/healthz`` and
``/metrics`` (docs/runtime.md has the shapes).

Every input is checked here before it reaches the loop: the body size is capped before it is read in full,
bytes must be UTF-8, JSON must be an object with the right types. A bad request gets a JSON error with a
stable ``code`` and never touches a stored conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from runtime.errors import InputError
from runtime.sessions import check_session_id, new_session_id
from runtime.voice.stage import STATES

log = logging.getLogger("storeclerk.server")

WEB_DIR = Path(__file__).resolve().parent / "web"
WS_MAX_MESSAGE = 8192
WS_MAX_RATE = 20  # messages per second per connection before it is told to slow down
VOICE_ACTIONS = ("ptt_start", "ptt_stop", "mute", "unmute")
VOICE_OFF = {"type": "voice_state", "state": "off", "muted": False, "mode": "ptt"}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _status_for(code: str) -> int:
    return {"busy": 503, "timeout": 504, "not_running": 503, "shutdown": 503}.get(code, 400)


def parse_turn(body: bytes, max_bytes: int) -> tuple[str, str]:
    """(session, text) from a ``POST /api/turn`` body, or ``InputError`` saying what is wrong."""
    if len(body) > max_bytes:
        raise InputError(f"request body is larger than {max_bytes} bytes", code="too_large")
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"request body is not valid UTF-8 (byte {exc.start})", code="bad_encoding") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="bad_json") from None
    if not isinstance(data, dict):
        raise InputError('expected a JSON object like {"session": "abc", "text": "where is the oat milk"}', code="bad_json")
    text = data.get("text")
    if not isinstance(text, str):
        raise InputError("'text' is required and must be a string", code="bad_text")
    session = data.get("session")
    if session is None:
        session = new_session_id()
    check_session_id(session)
    return session, text


def create_app(kiosk, *, media_dir: Path | None = None, max_body_bytes: int = 16384, store_name: str = "storeclerk",
               on_started=None, on_stopping=None, admin=None) -> FastAPI:
    """``kiosk`` is a ``runtime.loop.Kiosk`` (started and stopped with the app). ``admin`` maps admin action
    names ("kb_reload") to callables; admin endpoints answer only to requests from the machine itself."""

    async def lifespan(app: FastAPI):
        await kiosk.start()
        if on_started:
            await on_started()
        try:
            yield
        finally:
            if on_stopping:
                await on_stopping()
            await kiosk.stop()

    app = FastAPI(title="storeclerk kiosk", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = kiosk.metrics

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        route = path if path in ("/api/turn", "/healthz", "/metrics", "/", "/api/staff", "/api/end") else (
            "/static" if path.startswith("/static") else "/media" if path.startswith("/media") else "other")
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error on %s", route)
            response = _error(500, "internal", "internal error; the kiosk logged it")
        metrics.inc("storeclerk_http_requests_total", path=route, status=str(response.status_code))
        metrics.observe("storeclerk_http_seconds", time.perf_counter() - t0, path=route)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise InputError(f"request body is larger than {max_body_bytes} bytes", code="too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise InputError(f"request body is larger than {max_body_bytes} bytes", code="too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def reject(exc: InputError) -> JSONResponse:
        metrics.inc("storeclerk_input_errors_total", code=exc.code)
        status = 413 if exc.code == "too_large" else _status_for(exc.code)
        return _error(status, exc.code, exc.message)

    @app.post("/api/turn")
    async def api_turn(request: Request):
        try:
            session, text = parse_turn(await read_body(request), max_body_bytes)
            reply = await kiosk.turn(session, text, channel="api")
        except InputError as exc:
            return reject(exc)
        return JSONResponse(reply.as_dict())

    async def _session_only(request: Request) -> str:
        body = await read_body(request)
        try:
            data = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError("expected a JSON object with a 'session'", code="bad_json") from None
        if not isinstance(data, dict):
            raise InputError("expected a JSON object with a 'session'", code="bad_json")
        return check_session_id(data.get("session"))

    @app.post("/api/staff")
    async def api_staff(request: Request):
        try:
            reply = await kiosk.staff(await _session_only(request))
        except InputError as exc:
            return reject(exc)
        return JSONResponse(reply.as_dict())

    @app.post("/api/end")
    async def api_end(request: Request):
        try:
            sid = await _session_only(request)
        except InputError as exc:
            return reject(exc)
        ended = await kiosk.end_session(sid, "done")
        return JSONResponse({"session": sid, "ended": ended})

    @app.get("/healthz")
    async def healthz():
        h = kiosk.healthz()
        return JSONResponse(h, status_code=200 if h["running"] else 503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/{action}")
    async def admin_action(action: str, request: Request):
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1", "localhost", "testclient"):
            return _error(403, "forbidden", "admin actions are accepted only from the kiosk itself")
        fn = (admin or {}).get(action)
        if fn is None:
            return _error(404, "unknown_action", f"unknown admin action {action!r}")
        try:
            result = await fn() if asyncio.iscoroutinefunction(fn) else fn()
        except Exception as exc:
            return _error(422, getattr(exc, "code", "failed"), str(exc))
        return JSONResponse(result)

    @app.get("/")
    async def index():
        page = WEB_DIR / "index.html"
        if not page.exists():
            return Response(f"<!doctype html><title>{store_name}</title><p>The touchscreen page is not installed.</p>",
                            media_type="text/html", status_code=503)
        return FileResponse(page, media_type="text/html")

    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    if media_dir is not None and Path(media_dir).is_dir():
        app.mount("/media/products", StaticFiles(directory=media_dir), name="media")

    @app.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        owned: set[str] = set()
        send_lock = asyncio.Lock()

        async def send(msg: dict) -> None:
            async with send_lock:
                await socket.send_text(json.dumps(msg))

        async def listener(msg: dict) -> None:
            # The microphone and speaker are the kiosk's, not a session's: every page shows their state.
            if msg.get("type") == "voice_state":
                await send(_voice_state(msg))
                return
            if msg.get("type") == "wake":  # someone stepped up to the kiosk or scanned on the attract screen
                await send({"type": "wake", "reason": str(msg.get("reason", ""))})
                return
            # Session events (ended, staff, captions, spoken replies) go only to the page that owns the session.
            if msg.get("session") in owned:
                if msg.get("type") == "ended":
                    owned.discard(msg["session"])
                await send(msg)

        unsubscribe = kiosk.subscribe(listener)
        conn: dict[str, Any] = {"ptt": False}
        window_start, count = time.monotonic(), 0
        try:
            while True:
                raw = await socket.receive()
                if raw.get("type") == "websocket.disconnect":
                    break
                now = time.monotonic()
                if now - window_start > 1.0:
                    window_start, count = now, 0
                count += 1
                try:
                    if count > WS_MAX_RATE:
                        raise InputError("too many messages; slow down", code="rate_limited")
                    msg = _ws_message(raw)
                    await _ws_handle(kiosk, msg, owned, send, store_name, conn)
                except InputError as exc:
                    metrics.inc("storeclerk_input_errors_total", code=exc.code)
                    await send({"type": "error", "code": exc.code, "message": exc.message})
        except WebSocketDisconnect:
            pass
        finally:
            unsubscribe()
            voice = getattr(kiosk, "voice", None)
            if conn["ptt"] and voice is not None:
                # The page went away with the button held (closed, crashed, network): never leave the microphone open.
                try:
                    await _voice_call(voice.push_to_talk, False)
                except Exception as exc:
                    log.error("voice stage failed to release push-to-talk: %s", exc)

    return app


def _ws_message(raw: dict) -> dict[str, Any]:
    text = raw.get("text")
    if text is None:
        data = raw.get("bytes") or b""
        if len(data) > WS_MAX_MESSAGE:
            raise InputError(f"message is larger than {WS_MAX_MESSAGE} bytes", code="too_large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("message is not valid UTF-8", code="bad_encoding") from None
    if len(text) > WS_MAX_MESSAGE:
        raise InputError(f"message is larger than {WS_MAX_MESSAGE} characters", code="too_large")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"message is not valid JSON: {exc.msg}", code="bad_json") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise InputError('expected a JSON object with a "type"', code="bad_json")
    return msg


def _voice_state(raw: Any) -> dict[str, Any]:
    """The voice stage's state in the shape the page reads; anything unrecognisable reads as "off"."""
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        return dict(VOICE_OFF)
    return {"type": "voice_state", "state": raw["state"], "muted": bool(raw.get("muted", False)),
            "mode": "open" if raw.get("mode") == "open" else "ptt"}


async def _voice_call(fn, *args) -> Any:
    result = fn(*args)
    return await result if asyncio.iscoroutine(result) else result


async def _voice_attach(kiosk, sid: str, send) -> None:
    """Voice and camera turns go into this page's session; the page learns whether there is a microphone."""
    vision = getattr(kiosk, "vision", None)
    if vision is not None:
        try:
            vision.attach(sid)
        except Exception as exc:  # a broken camera stage must not cost the page its session
            log.error("vision stage failed on attach: %s", exc)
    voice = getattr(kiosk, "voice", None)
    if voice is None:
        await send(dict(VOICE_OFF))
        return
    try:
        await _voice_call(voice.attach, sid)
        state = await _voice_call(voice.state)
    except Exception as exc:  # a broken voice stage must not cost the page its session
        log.error("voice stage failed on attach: %s", exc)
        state = None
    await send(_voice_state(state))


async def _ws_voice(kiosk, msg: dict, owned: set[str], send, conn: dict[str, Any]) -> None:
    action = msg.get("action")
    if action not in VOICE_ACTIONS:
        raise InputError(f"unknown voice action {action!r} (expected one of {', '.join(VOICE_ACTIONS)})", code="bad_action")
    voice = getattr(kiosk, "voice", None)
    if voice is None:
        raise InputError("voice is off on this kiosk; type your question instead", code="voice_off")
    sid = msg.get("session")
    if sid is not None:  # the customer may have pressed the microphone in a session this socket has not seen yet
        owned.add(check_session_id(sid))
    try:
        if sid is not None and action == "ptt_start":
            await _voice_call(voice.attach, sid)
        if action in ("ptt_start", "ptt_stop"):
            await _voice_call(voice.push_to_talk, action == "ptt_start")
            conn["ptt"] = action == "ptt_start"
        else:
            await _voice_call(voice.set_muted, action == "mute")
        state = await _voice_call(voice.state)
    except Exception as exc:
        log.error("voice action %s failed: %s", action, exc)
        raise InputError("the microphone is not working right now; please type your question", code="voice_failed") from None
    await send(_voice_state(state))


async def _ws_handle(kiosk, msg: dict, owned: set[str], send, store_name: str = "", conn: dict[str, Any] | None = None) -> None:
    kind = msg["type"]
    if kind == "start":
        sid = new_session_id()
        await kiosk.start_session(sid, "touch")
        owned.add(sid)
        await send({"type": "session", "session": sid, "store": store_name})
        await _voice_attach(kiosk, sid, send)
        return
    if kind == "resume":  # the page reconnected: re-attach it to its session, or tell it the session is gone
        sid = check_session_id(msg.get("session"))
        if kiosk.sessions.get(sid) is None:
            await send({"type": "ended", "session": sid, "reason": "expired"})
        else:
            owned.add(sid)
            await send({"type": "session", "session": sid, "store": store_name, "resumed": True})
            await _voice_attach(kiosk, sid, send)
        return
    if kind == "voice":
        await _ws_voice(kiosk, msg, owned, send, conn if conn is not None else {"ptt": False})
        return
    if kind not in ("text", "staff", "end"):
        raise InputError(f"unknown message type {kind!r} (expected start, resume, text, staff, end, voice)", code="bad_type")
    sid = msg.get("session")
    if sid is None and kind in ("text", "staff"):
        sid = new_session_id()
        await kiosk.start_session(sid, "touch")
        await send({"type": "session", "session": sid, "store": store_name})
        await _voice_attach(kiosk, sid, send)
    check_session_id(sid)
    owned.add(sid)
    if kind == "text":
        text = msg.get("text")
        if not isinstance(text, str):
            raise InputError("'text' must be a string", code="bad_text")
        reply = await kiosk.turn(sid, text, channel="touch")
        await send({"type": "reply", **reply.as_dict()})
    elif kind == "staff":
        reply = await kiosk.staff(sid)
        await send({"type": "reply", **reply.as_dict()})
    elif not await kiosk.end_session(sid, "done"):  # a live session's end is broadcast by the kiosk
        owned.discard(sid)
        await send({"type": "ended", "session": sid, "reason": "done"})
