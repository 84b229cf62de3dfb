"""Diagnostics on stderr stay one whole line each, even after a progress line was drawn."""

from tui import output


def test_an_error_after_an_unfinished_progress_line_starts_a_line_of_its_own(capsys):
    output.progress("tokenising")(48, 100)
    output.stderr_line("llmplan: error: --data x.jsonl: line 3: text must be a string")
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "llmplan: error: --data x.jsonl: line 3: text must be a string"
    assert err.endswith("of 100 B\nllmplan: error: --data x.jsonl: line 3: text must be a string\n")


def test_a_finished_progress_line_adds_no_blank_line(capsys):
    output.progress("tokenising")(100, 100)
    output.warn("launching 2 process(es)")
    assert capsys.readouterr().err.endswith("of 100 B\nllmplan: launching 2 process(es)\n")
