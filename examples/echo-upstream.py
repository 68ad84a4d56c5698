#!/usr/bin/env python3
"""A small HTTP service to put the gateway in front of: answers every request
with the method, path and headers it received, as JSON (and a line with a
secret, for the body redactor to hide). Usage: echo-upstream.py [PORT]"""
import http.server
import json
import sys


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
        body = (json.dumps(seen, indent=2) + "\nthe secret is 42\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
http.server.ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
