"""What every test of a CLI user error checks (imported by the tests of several folders)."""


def assert_user_error(result, *needles: str) -> str:
    """Exit code 2 (bad input), a single 'Error: ...' line that names what is wrong, and no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit, "a user error must not raise"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
