from cxrbench.cli import app


def test_help_lists_commands(cli_runner):
    result = cli_runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version(cli_runner):
    result = cli_runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "cxrbench" in result.output
