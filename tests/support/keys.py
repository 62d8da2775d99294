"""API keys for load tests and benchmarks, whose requests must never meet a rate
limit (a 429 there would count as a failure, not as the limiter working)."""

UNLIMITED = 2_000_000_000  # requests per minute; fits the counters' integer columns
UNLIMITED_KEY_ARGS = ("--rate-limit-prep", str(UNLIMITED), "--rate-limit-check", str(UNLIMITED))


def unlimited_key_command(tenant_id: str, label: str) -> str:
    """The admin CLI line (for a shell on the VPS) issuing such a key, printed as JSON."""
    return f"course-supporter-admin key issue {tenant_id} --label {label} {' '.join(UNLIMITED_KEY_ARGS)} --json"
