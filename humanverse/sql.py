"""Row filters (``where``) as one boolean expression, never a statement.

A ``where`` filter (``humanverse show --where``, the trainer's ``data.where``, ``humanverse
latents --where``, ``humanverse testset rows --where``) selects rows of ``hv``; it is pasted into
a query the project builds. Pasted as text, ``1=1); COPY (…) TO '…'; --`` would run a second
statement. So the filter is parsed on its own by DuckDB's expression parser (which refuses
anything that is not exactly one expression), subqueries (which can read any file through table
functions) and window functions are refused, and the query embeds the text of the one parsed
expression (comments around it dropped), checked once more to make exactly one statement inside
``WHERE (…)``. ``humanverse query`` keeps full SQL: it is the user's own console.

The console also has named-keypoint macros (:func:`register_keypoint_macros`): ``kp(persons[1],
'left_wrist')`` instead of COCO-WholeBody index arithmetic over the flat keypoint array.
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


# ---------------------------------------------------------------------------------------------
# Named keypoints in SQL (the ``humanverse query`` console)


def _sql_list(values) -> str:
    return "[" + ", ".join(str(v) if not isinstance(v, str) else "'" + v.replace("'", "''") + "'"
                           for v in values) + "]"


def register_keypoint_macros(con) -> None:
    """Define the named-keypoint SQL macros on the DuckDB connection ``con``:

    * ``kp_index(name)``: the COCO-WholeBody index (0-132) of a keypoint name;
    * ``kp(person, name)``: one keypoint of a person as ``{x, y, score}``;
    * ``kp_visible(person, part[, threshold])``: how many of a part's keypoints (body, feet, face,
      left_hand, right_hand) score at least ``threshold`` (default :data:`~humanverse.schema.VISIBLE_SCORE`,
      what the stored ``<part>_visible`` counts);
    * ``kp_part(part)``: the part's 1-based position in :data:`~humanverse.schema.KEYPOINT_PARTS` (a helper).

    A person is an element of ``persons`` (``persons[1]``: DuckDB lists are 1-based). Keypoints are
    stored flat, ``keypoints[3k : 3k+3] = (x, y, score)`` (0-based ``k``), so point ``k`` is at
    1-based positions ``3k+1``, ``3k+2``, ``3k+3``. Names are :data:`humanverse.skeleton.KEYPOINT_NAMES`;
    an unknown name or part is an error naming it. A person without keypoints gives nulls.
    """
    from humanverse.schema import KEYPOINT_PARTS, VISIBLE_SCORE
    from humanverse.skeleton import KEYPOINT_NAMES

    parts = list(KEYPOINT_PARTS)
    starts = [r.start for r in KEYPOINT_PARTS.values()]
    stops = [r.stop for r in KEYPOINT_PARTS.values()]
    con.execute(f"CREATE OR REPLACE MACRO kp_index(name) AS CASE WHEN list_position({_sql_list(KEYPOINT_NAMES)}, "
                "name) IS NULL THEN error('unknown keypoint name ' || coalesce('''' || name || '''', 'NULL') || "
                "'; names are COCO-WholeBody''s, e.g. ''left_wrist'', ''right_big_toe'', ''face-0'', "
                f"''left_hand_root''') ELSE list_position({_sql_list(KEYPOINT_NAMES)}, name) - 1 END")
    con.execute("CREATE OR REPLACE MACRO kp(person, name) AS struct_pack("
                "x := person.keypoints[3 * kp_index(name) + 1], y := person.keypoints[3 * kp_index(name) + 2], "
                "score := person.keypoints[3 * kp_index(name) + 3])")
    con.execute(f"CREATE OR REPLACE MACRO kp_part(part) AS CASE WHEN list_position({_sql_list(parts)}, part) IS NULL "
                "THEN error('unknown keypoint part ' || coalesce('''' || part || '''', 'NULL') || '; parts are "
                f"{', '.join(parts)}') ELSE list_position({_sql_list(parts)}, part) END")
    con.execute(f"CREATE OR REPLACE MACRO kp_visible(person, part, threshold := {VISIBLE_SCORE}::DOUBLE) AS "
                "CASE WHEN person.keypoints IS NULL THEN NULL ELSE len(list_filter(list_slice(person.keypoints, "
                f"3 * {_sql_list(starts)}[kp_part(part)] + 3, 3 * {_sql_list(stops)}[kp_part(part)], 3), "
                "lambda s: s >= threshold)) END")
