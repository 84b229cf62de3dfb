"""The faces of llmplan: the Typer CLI (cli.py) and the Textual app (app.py)."""
