"""Readers for interaction logs and item side info.

Every interaction reader yields :class:`Interaction` tuples ``(user, item, timestamp, line, rating)``
in file order: ids are the original strings, ``timestamp`` is integer seconds (``None`` when the
format has none), ``line`` is the 1-based line number in the file (the row number for Parquet) and
``rating`` is a float or ``None``. A malformed line raises :class:`DataFormatError` naming the file
and the line; with ``skip_bad_lines=True`` the reader skips it and counts it in ``stats``.

Formats:

* ``movielens``: ``user::item::rating::timestamp`` (ISO-8859-1, plain or ``.gz``); side info
  ``movies.dat`` (``item::title::genre|genre``).
* ``recbole``: atomic ``.inter`` files, tab separated, header ``name:type`` (``user_id:token``,
  ``item_id:token``, ``rating:float``, ``timestamp:float``); side info ``.item`` files.
* ``text``: ``user item [timestamp]`` per line (whitespace separated), lines in time order.
* ``csv`` / ``parquet``: a table with a header; a column mapping names the user, item and
  (optionally) time and rating columns. Times are numbers (seconds) or ISO-8601 strings.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import os
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

FORMATS = ("movielens", "recbole", "text", "csv", "parquet")
COLUMN_KEYS = ("user", "item", "time", "rating")
DEFAULT_COLUMNS = {"user": "user", "item": "item", "time": "timestamp", "rating": "rating"}
# event logs (recsys_jax.data.events): every column but user and item is optional
EVENT_COLUMN_KEYS = ("user", "item", "time", "action", "surface", "is_ad", "advertiser", "campaign", "value",
                     "category")
DEFAULT_EVENT_COLUMNS = {"action": "action", "surface": "surface", "is_ad": "is_ad", "advertiser": "advertiser",
                         "campaign": "campaign", "value": "value", "category": "category"}


class DataFormatError(ValueError):
    """Bad input data: the message names the file, the line and what was expected."""


class Interaction(NamedTuple):
    user: str
    item: str
    timestamp: int | None
    line: int
    rating: float | None = None


class ReadStats:
    """Counters a reader fills while it runs (read after the iteration is done)."""

    def __init__(self) -> None:
        self.lines = 0  # data lines seen (header and blank lines not counted)
        self.bad_lines = 0  # malformed lines skipped (skip_bad_lines=True)
        self.first_bad: str | None = None  # the first skipped line's error message

    def bad(self, err: DataFormatError, skip: bool) -> None:
        if not skip:
            raise err
        self.bad_lines += 1
        self.first_bad = self.first_bad or str(err)


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file for reading, transparently gunzipping it when it is gzip-compressed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file '{path}' not found")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _where(path, line: int) -> str:
    return f"{os.fspath(path)}:{line}"


def _short(text: str, n: int = 80) -> str:
    text = text.rstrip("\r\n")
    return repr(text if len(text) <= n else text[:n] + "...")


def parse_time(value: Any, where: str) -> int:
    """Integer seconds from an int, a float, a numeric string or an ISO-8601 string (naive = UTC)."""
    if isinstance(value, bool):
        raise DataFormatError(f"{where}: expected a timestamp (seconds or ISO-8601), got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, datetime.datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return int(float(text))
        except ValueError:
            pass
        try:
            dt = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise DataFormatError(f"{where}: expected a timestamp (seconds or ISO-8601), got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp())


def _parse_rating(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: expected a numeric rating, got {value!r}") from None


# --------------------------------------------------------------------------------------------------
# MovieLens


def read_movielens(path, *, skip_bad_lines: bool = False, stats: ReadStats | None = None) -> Iterator[Interaction]:
    """MovieLens ``ratings.dat``: ``user::item::rating::timestamp`` (ISO-8859-1, optionally gzipped)."""
    stats = stats if stats is not None else ReadStats()
    with open_text(path, "iso-8859-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            stats.lines += 1
            parts = line.rstrip("\r\n").split("::")
            try:
                if len(parts) != 4 or not parts[0] or not parts[1]:
                    raise DataFormatError(
                        f"{_where(path, n)}: expected 'user::item::rating::timestamp' (4 fields), got {_short(line)}"
                    )
                rating = _parse_rating(parts[2], _where(path, n))
                ts = parse_time(parts[3], _where(path, n))
            except DataFormatError as e:
                stats.bad(e, skip_bad_lines)
                continue
            yield Interaction(parts[0].strip(), parts[1].strip(), ts, n, rating)


def read_movielens_items(path) -> dict[str, dict]:
    """MovieLens ``movies.dat``: ``item::title::genre|genre`` -> ``{item: {"title", "genres"}}``."""
    items = {}
    with open_text(path, "iso-8859-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("::")
            if len(parts) != 3 or not parts[0]:
                raise DataFormatError(
                    f"{_where(path, n)}: expected 'item::title::genre|genre' (3 fields), got {_short(line)}")
            genres = [g for g in parts[2].split("|") if g]
            items[parts[0].strip()] = {"title": parts[1], "genres": genres}
    return items


# --------------------------------------------------------------------------------------------------
# RecBole atomic files


def _recbole_header(path, header: str) -> list[tuple[str, str]]:
    cols = []
    for field in header.rstrip("\r\n").split("\t"):
        name, sep, kind = field.partition(":")
        if not sep or not name:
            raise DataFormatError(
                f"{_where(path, 1)}: expected a RecBole header of tab-separated 'name:type' fields, "
                f"got {_short(header)}"
            )
        cols.append((name, kind))
    return cols


def _find(cols: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in cols), None)


def read_recbole(path, *, skip_bad_lines: bool = False, stats: ReadStats | None = None) -> Iterator[Interaction]:
    """RecBole ``.inter``: header ``user_id:token item_id:token [rating:float] [timestamp:float]``."""
    stats = stats if stats is not None else ReadStats()
    with open_text(path) as f:
        header = f.readline()
        cols = [name for name, _ in _recbole_header(path, header)]
        user_col, item_col = _find(cols, ("user_id",)), _find(cols, ("item_id",))
        if user_col is None or item_col is None:
            raise DataFormatError(f"{_where(path, 1)}: the header needs 'user_id' and 'item_id' columns, got {cols}")
        iu, ii = cols.index(user_col), cols.index(item_col)
        time_col, rating_col = _find(cols, ("timestamp",)), _find(cols, ("rating",))
        it = cols.index(time_col) if time_col else None
        ir = cols.index(rating_col) if rating_col else None
        for n, line in enumerate(f, 2):
            if not line.strip():
                continue
            stats.lines += 1
            parts = line.rstrip("\r\n").split("\t")
            try:
                if len(parts) != len(cols) or not parts[iu] or not parts[ii]:
                    raise DataFormatError(
                        f"{_where(path, n)}: expected {len(cols)} tab-separated fields {cols}, got {_short(line)}"
                    )
                ts = parse_time(parts[it], _where(path, n)) if it is not None else None
                rating = _parse_rating(parts[ir], _where(path, n)) if ir is not None else None
            except DataFormatError as e:
                stats.bad(e, skip_bad_lines)
                continue
            yield Interaction(parts[iu], parts[ii], ts, n, rating)


_TITLE_FIELDS = ("title", "movie_title", "item_title", "name")
_GENRE_FIELDS = ("genres", "genre", "class", "categories", "category")


def read_recbole_items(path) -> dict[str, dict]:
    """RecBole ``.item`` -> ``{item: {field: value}}``.

    A title-like column (``movie_title``, ``title``, ...) becomes ``"title"`` (a string); a
    genre-like ``token_seq`` column (``class``, ``genre``, ...) becomes ``"genres"`` (a list); other
    ``token_seq`` columns become lists, ``float`` columns floats, everything else strings.
    """
    items = {}
    with open_text(path) as f:
        header = f.readline()
        cols = _recbole_header(path, header)
        names = [c for c, _ in cols]
        if "item_id" not in names:
            raise DataFormatError(f"{_where(path, 1)}: the header needs an 'item_id' column, got {names}")
        for n, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != len(cols):
                raise DataFormatError(
                    f"{_where(path, n)}: expected {len(cols)} tab-separated fields {names}, got {_short(line)}")
            info: dict[str, Any] = {}
            for (name, kind), value in zip(cols, parts):
                if name == "item_id":
                    continue
                if name in _TITLE_FIELDS:
                    info["title"] = value
                elif name in _GENRE_FIELDS:
                    info["genres"] = value.split()
                elif kind == "token_seq":
                    info[name] = value.split()
                elif kind == "float" and value:
                    info[name] = _parse_rating(value, _where(path, n))
                else:
                    info[name] = value
            items[parts[names.index("item_id")]] = info
    return items


# --------------------------------------------------------------------------------------------------
# Plain text


def read_text(path, *, skip_bad_lines: bool = False, stats: ReadStats | None = None) -> Iterator[Interaction]:
    """``user item [timestamp]`` per line; without timestamps the file order is the time order.

    The first data line decides whether the file has timestamps; every later line must agree.
    """
    stats = stats if stats is not None else ReadStats()
    width = None
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            stats.lines += 1
            try:
                if len(parts) not in (2, 3) or (width is not None and len(parts) != width):
                    want = "'user item [timestamp]'" if width is None else f"{width} fields as in the first line"
                    raise DataFormatError(f"{_where(path, n)}: expected {want}, got {_short(line)}")
                ts = parse_time(parts[2], _where(path, n)) if len(parts) == 3 else None
            except DataFormatError as e:
                stats.bad(e, skip_bad_lines)
                continue
            width = len(parts)
            yield Interaction(parts[0], parts[1], ts, n, None)


# --------------------------------------------------------------------------------------------------
# CSV and Parquet with a column mapping


def parse_columns(spec: str | Mapping[str, str] | None, keys: tuple[str, ...] = COLUMN_KEYS
                  ) -> dict[str, str | None]:
    """``"user=uid,item=iid,time=ts"`` (or a mapping) -> full mapping over ``keys`` (``COLUMN_KEYS``;
    ``EVENT_COLUMN_KEYS`` for event logs).

    Keys left out take the defaults ``user``, ``item``; the others are used only if the table has a
    column of their default name (``timestamp``, ``rating``, ``action``, ...) or are given explicitly.
    """
    if spec is None:
        given: dict[str, str] = {}
    elif isinstance(spec, str):
        given = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value.strip():
                raise ValueError(f"column mapping {part!r}: expected key=column, e.g. 'user=uid,item=iid,time=ts'")
            given[key.strip()] = value.strip()
    else:
        given = dict(spec)
    for key in given:
        if key not in keys:
            raise ValueError(f"column mapping: unknown key {key!r}; expected keys {list(keys)}")
    return {k: given.get(k) for k in keys}


def _resolve_columns(path, header: list[str], columns, keys: tuple[str, ...] = COLUMN_KEYS
                     ) -> dict[str, str | None]:
    cols = parse_columns(columns, keys)
    defaults = {**DEFAULT_COLUMNS, **DEFAULT_EVENT_COLUMNS}
    out: dict[str, str | None] = {}
    for key in keys:
        name = cols[key]
        if name is None:
            name = defaults[key] if defaults[key] in header or key in ("user", "item") else None
        if name is not None and name not in header:
            raise DataFormatError(
                f"{os.fspath(path)}: no column {name!r} for {key!r}; the table has columns {header} "
                f"(map them with --columns {key}=NAME)"
            )
        out[key] = name
    return out


def _table_row(path, n: int, row: Mapping[str, Any], cols) -> Interaction:
    where = _where(path, n)
    user, item = row.get(cols["user"]), row.get(cols["item"])
    if user is None or item is None or str(user).strip() == "" or str(item).strip() == "":
        raise DataFormatError(f"{where}: empty user or item (columns {cols['user']!r}, {cols['item']!r})")
    ts = None
    if cols["time"] is not None:
        value = row.get(cols["time"])
        if value is None or str(value).strip() == "":
            raise DataFormatError(f"{where}: empty timestamp in column {cols['time']!r}")
        ts = parse_time(value, where)
    rating = None
    if cols.get("rating") is not None:
        rating = _parse_rating(row.get(cols["rating"]), where)
    return Interaction(_id_str(user), _id_str(item), ts, n, rating)


def _id_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def read_csv(path, *, columns=None, skip_bad_lines: bool = False, stats: ReadStats | None = None,
             delimiter: str | None = None, keys: tuple[str, ...] = COLUMN_KEYS, row_parser=None
             ) -> Iterator[Interaction]:
    """CSV (or TSV: the delimiter is sniffed from the header) with a header row and a column mapping.

    ``keys`` / ``row_parser``: the mapping keys and ``(path, line, row, cols) -> record`` (default:
    interactions; :func:`read_csv_events` passes the event ones)."""
    row_parser = row_parser or _table_row
    stats = stats if stats is not None else ReadStats()
    with open_text(path) as f:
        header_line = f.readline()
        if not header_line.strip():
            raise DataFormatError(f"{_where(path, 1)}: expected a header row naming the columns, got an empty line")
        if delimiter is None:
            delimiter = "\t" if header_line.count("\t") > header_line.count(",") else ","
        header = next(csv.reader([header_line], delimiter=delimiter))
        header = [h.strip() for h in header]
        cols = _resolve_columns(path, header, columns, keys)
        reader = csv.reader(f, delimiter=delimiter)
        while True:
            try:
                parts = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                stats.lines += 1
                stats.bad(DataFormatError(f"{_where(path, reader.line_num + 1)}: {e}"), skip_bad_lines)
                continue
            n = reader.line_num + 1  # +1 for the header line read before the csv reader started
            if not parts or all(not p.strip() for p in parts):
                continue
            stats.lines += 1
            try:
                if len(parts) != len(header):
                    raise DataFormatError(
                        f"{_where(path, n)}: expected {len(header)} fields {header}, got {len(parts)}")
                yield row_parser(path, n, dict(zip(header, parts)), cols)
            except DataFormatError as e:
                stats.bad(e, skip_bad_lines)


def read_parquet(path, *, columns=None, skip_bad_lines: bool = False, stats: ReadStats | None = None,
                 batch_rows: int = 65536, keys: tuple[str, ...] = COLUMN_KEYS, row_parser=None
                 ) -> Iterator[Interaction]:
    """Parquet with a column mapping; ``line`` is the 1-based row number (``keys`` / ``row_parser``:
    as for :func:`read_csv`)."""
    import pyarrow.parquet as pq

    row_parser = row_parser or _table_row
    stats = stats if stats is not None else ReadStats()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file '{os.fspath(path)}' not found")
    pf = pq.ParquetFile(os.fspath(path))
    cols = _resolve_columns(path, pf.schema_arrow.names, columns, keys)
    wanted = [c for c in cols.values() if c is not None]
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            n += 1
            stats.lines += 1
            try:
                yield row_parser(path, n, {c: data[c][i] for c in wanted}, cols)
            except DataFormatError as e:
                stats.bad(e, skip_bad_lines)


class EventRow(NamedTuple):
    """One event-log row: ids and names as strings, optional fields None."""

    user: str
    item: str
    timestamp: int | None
    line: int
    action: str | None
    surface: str | None
    is_ad: bool
    advertiser: str | None
    campaign: str | None
    value: float | None
    category: str | None


_TRUE, _FALSE = ("1", "true", "t", "yes", "y"), ("0", "false", "f", "no", "n", "")


def _parse_bool(value: Any, where: str, column: str) -> bool:
    if isinstance(value, (bool, int)) and not isinstance(value, float):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise DataFormatError(f"{where}: expected a boolean (1/0, true/false, yes/no) in column {column!r}, got {value!r}")


def _event_row(path, n: int, row: Mapping[str, Any], cols) -> EventRow:
    base = _table_row(path, n, row, cols)
    where = _where(path, n)

    def text(key):
        if cols[key] is None:
            return None
        v = row.get(cols[key])
        return None if v is None or str(v).strip() == "" else _id_str(v)

    value = text("value")
    return EventRow(base.user, base.item, base.timestamp, n, text("action"), text("surface"),
                    _parse_bool(row.get(cols["is_ad"]), where, cols["is_ad"]) if cols["is_ad"] else False,
                    text("advertiser"), text("campaign"),
                    None if value is None else _parse_rating(value, where), text("category"))


def read_csv_events(path, *, columns=None, skip_bad_lines: bool = False, stats: ReadStats | None = None
                    ) -> Iterator[EventRow]:
    """An event log in CSV/TSV; ``columns`` maps :data:`EVENT_COLUMN_KEYS` to column names."""
    return read_csv(path, columns=columns, skip_bad_lines=skip_bad_lines, stats=stats, keys=EVENT_COLUMN_KEYS,
                    row_parser=_event_row)


def read_parquet_events(path, *, columns=None, skip_bad_lines: bool = False, stats: ReadStats | None = None
                        ) -> Iterator[EventRow]:
    """An event log in Parquet; ``columns`` maps :data:`EVENT_COLUMN_KEYS` to column names."""
    return read_parquet(path, columns=columns, skip_bad_lines=skip_bad_lines, stats=stats, keys=EVENT_COLUMN_KEYS,
                        row_parser=_event_row)


def read_table_items(path, item_column: str = "item") -> dict[str, dict]:
    """Item side info from a CSV/TSV or Parquet table: every other column becomes a field."""
    path = os.fspath(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pylist()
        header = list(table[0]) if table else []
        rows = enumerate(table, 1)
    else:
        with open_text(path) as f:
            text = f.read()
        first = text.split("\n", 1)[0]
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if first.count("\t") > first.count(",") else ",")
        header = list(reader.fieldnames or [])
        rows = enumerate(reader, 2)
    if item_column not in header:
        raise DataFormatError(f"{path}: no item column {item_column!r}; the table has columns {header}")
    items = {}
    for n, row in rows:
        key = row.get(item_column)
        if key is None or str(key).strip() == "":
            raise DataFormatError(f"{_where(path, n)}: empty item id in column {item_column!r}")
        items[_id_str(key)] = {k: v for k, v in row.items() if k != item_column}
    return items


# --------------------------------------------------------------------------------------------------


def read_interactions(fmt: str, path, *, columns=None, skip_bad_lines: bool = False,
                      stats: ReadStats | None = None) -> Iterator[Interaction]:
    """Dispatch to the reader of ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if columns is not None and fmt not in ("csv", "parquet"):
        raise ValueError(f"a column mapping applies to the csv and parquet formats, not {fmt!r}")
    kw: dict[str, Any] = {"skip_bad_lines": skip_bad_lines, "stats": stats}
    if fmt in ("csv", "parquet"):
        kw["columns"] = columns
    reader = {"movielens": read_movielens, "recbole": read_recbole, "text": read_text,
              "csv": read_csv, "parquet": read_parquet}[fmt]
    return reader(path, **kw)


def read_items(fmt: str, path, *, columns=None) -> dict[str, dict]:
    """Item side info for ``fmt``: ``movies.dat``, a RecBole ``.item``, or a CSV/Parquet table."""
    if fmt == "movielens":
        return read_movielens_items(path)
    if fmt == "recbole":
        return read_recbole_items(path)
    item_col = parse_columns(columns)["item"] or "item"
    return read_table_items(path, item_col)


def default_items_path(fmt: str, path) -> str | None:
    """The side-info file that usually sits beside ``path``: ``movies.dat`` or ``<stem>.item``."""
    path = os.fspath(path)
    if fmt == "movielens":
        cand = os.path.join(os.path.dirname(path), "movies.dat")
    elif fmt == "recbole":
        base = path[:-3] if path.endswith(".gz") else path
        cand = os.path.splitext(base)[0] + ".item"
    else:
        return None
    return cand if os.path.isfile(cand) else None


def guess_format(path) -> str | None:
    """The format implied by a file name (``.inter``, ``.dat[.gz]``, ``.csv``, ``.parquet``, ``.txt``)."""
    name = os.fspath(path).lower()
    name = name[:-3] if name.endswith(".gz") else name
    for suffix, fmt in ((".inter", "recbole"), (".dat", "movielens"), (".csv", "csv"), (".tsv", "csv"),
                        (".parquet", "parquet"), (".txt", "text")):
        if name.endswith(suffix):
            return fmt
    return None
