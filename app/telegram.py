"""Messages to the operator through the Telegram Bot API (``sendMessage``).

The bot's token is part of every URL, so nothing here lets a URL reach a log or an
exception's text: a failure is ``TelegramError`` saying only what went wrong.
"""

from __future__ import annotations

import aiohttp

SEND_TIMEOUT_S = 10.0


class TelegramError(Exception):
    """The Bot API did not take the message (the text says why, without the token)."""


class Bot:
    def __init__(self, api_url: str, token: str, chat_id: str) -> None:
        self._url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
        self.chat_id = chat_id
        self._session: aiohttp.ClientSession | None = None

    async def send(self, text: str) -> None:
        """Send ``text`` (plain, no markup) to the chat; ``TelegramError`` if it was not taken."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S))
        try:
            async with self._session.post(self._url, json={"chat_id": self.chat_id, "text": text,
                                                           "disable_web_page_preview": True}) as response:
                if response.status != 200:
                    description = ""
                    try:
                        description = str((await response.json(content_type=None)).get("description", ""))[:200]
                    except (ValueError, AttributeError):
                        pass
                    raise TelegramError(f"the Bot API answered {response.status} {description}".rstrip())
        except aiohttp.ClientError as exc:  # its text may carry the URL, and so the token
            raise TelegramError(f"could not reach the Bot API ({type(exc).__name__})") from None
        except TimeoutError:
            raise TelegramError(f"the Bot API did not answer in {SEND_TIMEOUT_S:g} s") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
