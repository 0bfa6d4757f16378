import gzip

import pytest

from recsys_jax.data import formats
from recsys_jax.data.formats import DataFormatError, read_interactions


def _tuples(xs):
    return [(x.user, x.item, x.timestamp, x.line, x.rating) for x in xs]


def test_movielens_plain_and_gzip_with_side_info(write, tmp_path):
    text = "1::10::5::978300760\n1::20::3::978300761\n\n2::10::4::978300100\n"
    plain = write(tmp_path / "ratings.dat", text)
    gz = tmp_path / "ratings.dat.gz"
    gz.write_bytes(gzip.compress(text.encode("iso-8859-1")))
    want = [("1", "10", 978300760, 1, 5.0), ("1", "20", 978300761, 2, 3.0), ("2", "10", 978300100, 4, 4.0)]
    assert _tuples(read_interactions("movielens", plain)) == want
    assert _tuples(read_interactions("movielens", gz)) == want
    movies = write(tmp_path / "movies.dat", "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n",
                   encoding="iso-8859-1")
    items = formats.read_items("movielens", movies)
    assert items["10"] == {"title": "Amélie (2001)", "genres": ["Comedy", "Romance"]}
    assert formats.default_items_path("movielens", plain) == movies


def test_recbole_inter_and_item(write, tmp_path):
    inter = write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "u1\ti1\t3\t881250949\nu2\ti2\t4.5\t881250950.7\n")
    assert _tuples(read_interactions("recbole", inter)) == [("u1", "i1", 881250949, 2, 3.0),
                                                             ("u2", "i2", 881250950, 3, 4.5)]
    item = write(tmp_path / "toy.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                        "i1\tToy Story\t1995\tAnimation Comedy\n")
    assert formats.default_items_path("recbole", inter) == item
    assert formats.read_items("recbole", item) == {
        "i1": {"title": "Toy Story", "release_year": "1995", "genres": ["Animation", "Comedy"]}}


def test_recbole_without_timestamp_column(write, tmp_path):
    inter = write(tmp_path / "a.inter", "user_id:token\titem_id:token\nu1\ti1\nu1\ti2\n")
    assert _tuples(read_interactions("recbole", inter)) == [("u1", "i1", None, 2, None), ("u1", "i2", None, 3, None)]


def test_text_with_and_without_timestamps(write, tmp_path):
    no_ts = write(tmp_path / "beauty.txt", "1 1\n1 2\n\n2 3\n")
    assert _tuples(read_interactions("text", no_ts)) == [("1", "1", None, 1, None), ("1", "2", None, 2, None),
                                                          ("2", "3", None, 4, None)]
    ts = write(tmp_path / "ts.txt", "a x 100\na y 50\n")
    assert [x.timestamp for x in read_interactions("text", ts)] == [100, 50]


def test_csv_column_mapping_and_iso_times(write, tmp_path):
    path = write(tmp_path / "log.csv", "uid,iid,ts,score\nu1,i1,2024-01-01T00:00:00,1\n"
                                       "u1,\"i,2\",2024-01-01T00:01:00,0.5\n")
    got = _tuples(read_interactions("csv", path, columns="user=uid,item=iid,time=ts,rating=score"))
    assert got == [("u1", "i1", 1704067200, 2, 1.0), ("u1", "i,2", 1704067260, 3, 0.5)]
    # default column names: user, item, and timestamp when present
    path2 = write(tmp_path / "log2.csv", "user,item,timestamp\n7,8,9\n")
    assert _tuples(read_interactions("csv", path2)) == [("7", "8", 9, 2, None)]


def test_csv_unknown_column_names_the_columns(write, tmp_path):
    path = write(tmp_path / "log.csv", "uid,iid\nu1,i1\n")
    with pytest.raises(DataFormatError, match=r"no column 'user'.*\['uid', 'iid'\]"):
        list(read_interactions("csv", path))
    with pytest.raises(ValueError, match="unknown key 'usr'"):
        formats.parse_columns("usr=uid")


def test_parquet_column_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "log.parquet")
    pq.write_table(pa.table({"uid": [1, 1, 2], "iid": ["a", "b", "a"], "ts": [30, 10, 20]}), path)
    got = _tuples(read_interactions("parquet", path, columns={"user": "uid", "item": "iid", "time": "ts"}))
    assert got == [("1", "a", 30, 1, None), ("1", "b", 10, 2, None), ("2", "a", 20, 3, None)]


@pytest.mark.parametrize("fmt,name,text,bad_line", [
    ("movielens", "ratings.dat", "1::2::3::4\n1::2::3\n", 2),
    ("movielens", "ratings.dat", "1::2::3::4\n\n1::2::x::4\n", 3),
    ("recbole", "a.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\n", 3),
    ("recbole", "a.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tyesterday\n", 2),
    ("text", "a.txt", "1 2\n1 3\n1\n", 3),
    ("text", "a.txt", "1 2 5\n1 3\n", 2),
    ("csv", "a.csv", "user,item,timestamp\n1,2,3\n1,2,3\n1,2\n", 4),
    ("csv", "a.csv", "user,item,timestamp\n1,2,\n", 2),
])
def test_malformed_line_names_file_and_line(write, tmp_path, fmt, name, text, bad_line):
    path = write(tmp_path / name, text)
    with pytest.raises(DataFormatError) as err:
        list(read_interactions(fmt, path))
    assert f"{path}:{bad_line}:" in str(err.value)
    # skip mode: the bad line is skipped and counted, the others are kept
    stats = formats.ReadStats()
    kept = list(read_interactions(fmt, path, skip_bad_lines=True, stats=stats))
    assert stats.bad_lines == 1 and f":{bad_line}:" in stats.first_bad
    assert len(kept) == stats.lines - 1


def test_bad_recbole_header_and_missing_file(write, tmp_path):
    path = write(tmp_path / "a.inter", "user_id\titem_id\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"a.inter:1: expected a RecBole header"):
        list(read_interactions("recbole", path))
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        list(read_interactions("movielens", tmp_path / "nope.dat"))
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        read_interactions("xml", path)


def test_guess_format():
    assert formats.guess_format("x/ratings.dat.gz") == "movielens"
    assert formats.guess_format("ml-100k.inter") == "recbole"
    assert formats.guess_format("beauty.txt") == "text"
    assert formats.guess_format("a.parquet") == "parquet"
    assert formats.guess_format("a.json") is None


def test_real_files_light(real_data):
    import os

    ml100k = os.path.join(real_data, "ml-100k", "ml-100k.inter")
    xs = list(read_interactions("recbole", ml100k))
    assert len(xs) == 100_000
    assert len({x.user for x in xs}) == 943 and len({x.item for x in xs}) == 1682
    assert len(formats.read_items("recbole", formats.default_items_path("recbole", ml100k))) == 1682
    movies = formats.read_items("movielens", os.path.join(real_data, "ml-1m-half", "movies.dat"))
    assert len(movies) == 3883 and movies["1"]["genres"] == ["Animation", "Children's", "Comedy"]
