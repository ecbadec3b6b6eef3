from cxrbench.cli import app


def test_help_lists_commands(cli_runner):
    result = cli_runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version(cli_runner):
    result = cli_runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "cxrbench" in result.output


def _commands(group, path=()):
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_help_is_folded_and_shows_brackets_as_typed(cli_runner):
    """--help text: paragraphs joined (rich wraps them itself) and no markup eating '[...]'
    (`cuda:N [auto].` used to print as `cuda:N .`)."""
    import re

    import typer

    group = typer.main.get_command(app)
    seen = 0
    for path, cmd in _commands(group):
        result = cli_runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        text = result.output
        assert not re.search(r"\w \.(\s|$)", text), (path, re.search(r".{40}\w \.(\s|$)", text))
        for param in cmd.params:
            if param.help:
                assert "\n" not in param.help, (path, param.name)
        for par in (cmd.help or "").split("\n\n"):
            lines = par.splitlines()
            assert len(lines) == 1 or all(line.startswith(("  ", "cxrbench ", "$ ")) for line in lines), \
                (path, par[:80])
        seen += 1
    assert seen >= 14  # every command of the app, the study and weights subcommands included
    result = cli_runner.invoke(app, ["study", "run", "--help"], env={"COLUMNS": "200"})
    assert "cpu, cuda or cuda:N [auto]." in result.output
    assert "Study output folder [the config's 'out']." in result.output
