"""Fixtures for provisioning tests: a virtual board (real MicroPython behind a pty,
provisioning/virtual_board.py) per test, in tmp_path.

    def test_ls(virtual_board):
        subprocess.run([sys.executable, "-m", "mpremote", "connect", virtual_board.port,
                        "ls"], timeout=30)

The board's flash is `virtual_board.flash_dir` (tmp_path/"board-flash"), its port a stable
symlink (tmp_path/"board-port") and its discovery record goes to tmp_path/"records"
(DORDT_VIRTUAL_BOARDS_DIR), so tests never see each other's boards or the user's.  A
missing Node or npm package fails the test saying to run `make setup`; it never skips.
"""

import pytest

from dordt.errors import UserError


@pytest.fixture
def virtual_board(tmp_path, monkeypatch):
    """A started VirtualBoard (ESP32-S3 profile, SDS011 on the UART); stopped after the
    test."""
    from provisioning.virtual_board import RECORDS_ENV, VirtualBoard

    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records"))
    board = VirtualBoard(tmp_path / "board-flash", link=tmp_path / "board-port")
    try:
        board.start()
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield board
    finally:
        board.stop()
