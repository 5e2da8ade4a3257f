"""Test-session setup: with `pytest -n 2 --dist loadfile` (the test command), the two longest files start first, so the
rest of the suite runs beside them instead of after them."""

SLOW_FIRST = ('test_smoke.py', 'test_wheel.py')


def pytest_collection_modifyitems(config, items):
    rank = lambda item: next((i for i, name in enumerate(SLOW_FIRST) if item.path.name == name), len(SLOW_FIRST))
    items.sort(key=rank)   # stable: every other file keeps its order
