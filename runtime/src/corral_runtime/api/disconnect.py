"""Cancel a request's handler when its client goes away before the response starts.

Streaming responses notice a departed client themselves, but a handler still working towards
its first byte (a non-streamed generation, or a request waiting in a model's queue) would
otherwise run to the end for nobody and keep a decode slot busy. Once the request body has
been read, this middleware listens for ``http.disconnect`` and cancels the handler's task;
the handler's clean-up (``finally``) then cancels the generation and frees the slot at once.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        response_started = False
        client_gone = False
        taken: list[Message] = []  # messages the listener received that the app must still see

        async def app_receive() -> Message:
            if taken:
                return taken.pop(0)
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                listener.cancel()
            await send(message)

        async def listen() -> None:
            nonlocal client_gone
            await body_read.wait()
            message = await receive()
            taken.append(message)
            if message["type"] == "http.disconnect" and not response_started:
                client_gone = True
                handler.cancel()

        async def run_app() -> None:
            await self.app(scope, app_receive, app_send)

        handler = asyncio.create_task(run_app())
        listener = asyncio.create_task(listen())
        try:
            await handler
        except asyncio.CancelledError:
            if not client_gone:
                raise  # the server is cancelling this request itself
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
