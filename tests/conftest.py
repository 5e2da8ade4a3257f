"""Test-session setup: with `pytest -n 2 --dist loadfile` (the test command), the longest file (the wheel's paper smoke
rehearsal) starts first, so the rest of the suite runs beside it instead of after it."""

SLOW_FIRST = ('test_wheel.py',)


def pytest_collection_modifyitems(config, items):
    rank = lambda item: next((i for i, name in enumerate(SLOW_FIRST) if item.path.name == name), len(SLOW_FIRST))
    items.sort(key=rank)   # stable: every other file keeps its order
