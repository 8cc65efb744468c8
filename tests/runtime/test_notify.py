import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from runtime.notify import Handoff, LogNotifier, ScreenNotifier, WebhookNotifier, build_notifiers, notify_all


def test_webhook_posts_json_to_a_local_url():
    got = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/staff"
    h = Handoff("s1", "frustration", "this is [EMAIL] useless", "complaint")
    failed = asyncio.run(notify_all([WebhookNotifier(url)], h))
    srv.server_close()
    assert failed == []
    assert got[0]["event"] == "staff_requested" and got[0]["reason"] == "frustration" and got[0]["session"] == "s1"


def test_one_failing_notifier_does_not_stop_the_others(caplog):
    screen_msgs = []

    async def broadcast(msg):
        screen_msgs.append(msg)

    dead = WebhookNotifier("http://127.0.0.1:9/nothing-listens", timeout_s=0.5)
    errors = []
    failed = asyncio.run(notify_all([dead, ScreenNotifier(broadcast), LogNotifier()], Handoff("s2", "request", "hi"),
                                    on_error=lambda n, e: errors.append(n)))
    assert failed == ["webhook"] and errors == ["webhook"]
    assert screen_msgs == [{"type": "staff", "session": "s2", "text": "Someone is coming to help you."}]
    assert "staff requested: session=s2" in caplog.text


def test_build_from_config():
    ns = build_notifiers([{"type": "log"}, {"type": "webhook", "url": "http://127.0.0.1:1/x", "timeout_s": 1}])
    assert [n.name for n in ns] == ["log", "webhook"] and ns[1].timeout_s == 1.0
