"""pytest across worker processes (`make test`: pytest-xdist, `-n 2 --dist loadscope`).

xdist sends a scope of tests to one worker, in order. Here a scope is one test, except that the cells of a
notebook share one kernel and run in order (nbval), so a notebook is one scope, and the browser tests, which
each start JupyterLab and Chromium, are one scope. pytest-xdist 3.8 cannot group by its `xdist_group` mark
under pytest 9 (it renames node ids through an attribute pytest 9 no longer reads), hence the scheduler here.
"""

import pytest

TOGETHER = ("tests/test_widget_browser.py",)  # test files whose tests run one after another on one worker


def scope_of(nodeid: str) -> str:
    "The work unit a test belongs to: its notebook, its file if listed in TOGETHER, else the test itself."
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".ipynb") or path in TOGETHER else nodeid


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unused when it is not installed
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None  # xdist's own scheduler for the other modes
    from xdist.scheduler import LoadScopeScheduling

    class ScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ScopeScheduling(config, log)
