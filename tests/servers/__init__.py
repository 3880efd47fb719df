"""Real servers the integration and contract tests start on loopback (Orthanc, PostgreSQL, Kafka), each
with a session-scoped pytest fixture registered in tests/conftest.py."""
