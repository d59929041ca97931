"""Fixture modules: real servers on free loopback ports, exported repositories, the gateway, the fake LLM upstream."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.gateway",
    "tests.fixtures.exported",
    "tests.fixtures.fake_llm",
    "tests.fixtures.llm",
    "tests.fixtures.jobs",
    "tests.fixtures.task_models",
]
