"""Row filters (``where``) as one boolean expression, never a statement.

A ``where`` filter (``humanverse show --where``, the trainer's ``data.where``, ``humanverse
latents --where``, ``humanverse testset rows --where``) selects rows of ``hv``; it is pasted into
a query the project builds. Pasted as text, ``1=1); COPY (…) TO '…'; --`` would run a second
statement. So the filter is parsed on its own by DuckDB's expression parser (which refuses
anything that is not exactly one expression), subqueries (which can read any file through table
functions) and window functions are refused, and the query embeds the text of the one parsed
expression (comments around it dropped), checked once more to make exactly one statement inside
``WHERE (…)``. ``humanverse query`` keeps full SQL: it is the user's own console.
"""

from __future__ import annotations

import json

from humanverse.errors import first_line

#: AST node classes a row filter may not contain (json_serialize_sql's ``class`` field)
_REFUSED = {"SUBQUERY": "a subquery", "WINDOW": "a window function"}


def where_expression(where: str, what: str = "where") -> str:
    """The text of ``where``'s one parsed expression (safe to embed in ``WHERE (…)``); a
    ``ValueError`` of one sentence, naming ``what``, for anything else."""
    import duckdb

    if not isinstance(where, str) or not where.strip():
        raise ValueError(f"{what} must be a non-empty SQL condition on the columns of hv, got {where!r}.")
    try:
        expr = str(duckdb.SQLExpression(where))
    except duckdb.Error as e:
        first = first_line(e)
        raise ValueError(f"{what} {where!r} is not one SQL condition on the columns of hv ({first}).") from None
    con = duckdb.connect()
    try:
        query = f"SELECT 1 FROM hv WHERE ({expr})"
        ast = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    finally:
        con.close()
    if ast.get("error") or len(ast.get("statements", ())) != 1:
        raise ValueError(f"{what} {where!r} is not one SQL condition on the columns of hv.")
    found = _classes(ast["statements"][0]["node"]["where_clause"]) & _REFUSED.keys()
    if found:
        raise ValueError(f"{what} {where!r} uses {_REFUSED[sorted(found)[0]]}; a filter is one condition on the "
                         "columns of a row, e.g. \"num_persons = 1 AND aesthetic >= 5\".")
    return expr


def _classes(node) -> set[str]:
    """Every ``class`` value in a json_serialize_sql subtree."""
    if isinstance(node, dict):
        out = {node["class"]} if isinstance(node.get("class"), str) else set()
        for v in node.values():
            out |= _classes(v)
        return out
    if isinstance(node, list):
        return set().union(*map(_classes, node)) if node else set()
    return set()
