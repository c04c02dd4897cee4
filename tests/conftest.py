pytest_plugins = [
    "tests.fixtures.micropython",
    "tests.fixtures.services",
    "tests.fixtures.faultproxy",
    "tests.fixtures.balena_api",
]
