"""Print the robustness tallies (cases tried, refused, accepted, crashed) after the run."""

from tests.robustness.harness import TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY.tried:
        terminalreporter.section("robustness")
        for line in TALLY.lines():
            terminalreporter.write_line(line)
