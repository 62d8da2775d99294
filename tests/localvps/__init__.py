"""The local VPS: a Debian 12 systemd-nspawn machine with its own network
namespace, plus the host-side servers it talks to (an ACME server, an S3
server, a fake Telegram Bot API), all under ``.vps/`` in the checkout.

``python -m tests.localvps up`` boots (or re-uses) it and provisions it with
the real playbooks; ``down`` removes everything ``up`` created, by PID and by
name, and nothing else. ``make vps`` / ``make vps-down`` call these.
"""
