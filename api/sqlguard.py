"""What operator SQL may be: read-shaped, inside the history, no files, no network.

The statement is parsed by the engine's own parser (``EXPLAIN AST``, which parses and does
not run anything) and the tree is checked before the statement runs:

* the statement is a query (``SELECT``/``WITH``/``UNION``), ``SHOW TABLES`` or ``DESCRIBE``
  of a table;
* no ``INTO OUTFILE`` (the query's output goes to the API, nowhere else) and no ``SETTINGS``
  clause (the limits are the API's);
* no table function but the harmless generators (``url``, ``file``, ``remote``, ``s3`` ...
  would read files or reach the network from the server);
* tables only of the history database, and of ``system`` only those in ``SYSTEM_TABLES``.

It then runs on the endpoint's own connection with ``readonly=1`` and caps on rows, bytes,
memory and time (``api/operate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

ROOTS = frozenset({"SelectWithUnionQuery", "ShowTables", "DescribeQuery"})
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generateSeries",
                             "generate_series", "values"})
SYSTEM_TABLES = frozenset({"one", "numbers", "tables", "columns", "parts", "functions"})


class RefusedSql(ValueError):
    """The statement is not one the endpoint runs; the message says why."""


@dataclass(frozen=True)
class Node:
    depth: int
    name: str  # the node's type, e.g. SelectQuery, Function, TableIdentifier
    text: str  # the rest of its line (a function or table name, a literal)


def parse_tree(lines: list[str]) -> list[Node]:
    """EXPLAIN AST's indented lines as nodes (depth from the indentation)."""
    out: list[Node] = []
    for line in lines:
        stripped = line.lstrip(" ")
        head, _, rest = stripped.partition(" ")
        out.append(Node(len(line) - len(stripped), head, rest.split(" (children")[0].strip()))
    return out


def check_tree(nodes: list[Node], database: str) -> None:
    """Raise RefusedSql unless the parsed statement is allowed."""
    if not nodes:
        raise RefusedSql("empty statement")
    root = nodes[0]
    if root.name == "Explain" and len(nodes) > 1:  # EXPLAIN <query>: the query must pass
        inner = [n for n in nodes[1:] if n.depth > root.depth]
        return check_tree(inner, database)
    if root.name not in ROOTS:
        raise RefusedSql(f"only SELECT, SHOW TABLES and DESCRIBE are allowed (got {root.name})")
    for i, n in enumerate(nodes):
        parent = _parent(nodes, i)
        if n.name == "Set":
            raise RefusedSql("SETTINGS are not allowed: the endpoint's limits apply")
        if parent is root and root.name == "SelectWithUnionQuery" and n.name == "Literal":
            raise RefusedSql("INTO OUTFILE is not allowed")
        if n.name == "Function" and parent is not None and parent.name == "TableExpression":
            if n.text not in TABLE_FUNCTIONS:
                raise RefusedSql(f"table function {n.text}() is not allowed")
        if n.name == "TableIdentifier":
            db, _, table = n.text.rpartition(".")
            if db == "system":
                if table not in SYSTEM_TABLES:
                    raise RefusedSql(f"system.{table} is not readable here "
                                     f"(allowed: {', '.join(sorted(SYSTEM_TABLES))})")
            elif db and db != database:
                raise RefusedSql(f"only the history database {database} is readable")
        if n.name in ("InsertQuery", "CreateQuery", "AlterQuery", "DropQuery",
                      "OptimizeQuery", "SystemQuery", "KillQueryQuery", "SetQuery"):
            raise RefusedSql(f"{n.name} is not a read")


def _parent(nodes: list[Node], i: int) -> Node | None:
    d = nodes[i].depth
    for j in range(i - 1, -1, -1):
        if nodes[j].depth < d:
            return nodes[j]
    return None
