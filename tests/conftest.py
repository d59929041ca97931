"""Fixture modules: real servers on free loopback ports, exported repositories, the gateway."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.gateway",
    "tests.fixtures.exported",
]
