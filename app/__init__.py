"""Course Supporter: a multi-tenant API for course preparation and homework checking."""

__version__ = "0.1.0"
