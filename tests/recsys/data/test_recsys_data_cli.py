import os
import subprocess
import sys

import pytest

from recsys_jax.cli import main
from recsys_jax.data.loader import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_data_build_csv_end_to_end(write, tmp_path, capsys):
    log = write(tmp_path / "log.csv", "uid,iid,ts,r\n" + "".join(
        f"u{u},i{(u * 3 + k) % 7},{100 * k},{1 + k % 5}\n" for u in range(4) for k in range(6)))
    out = tmp_path / "out"
    rc = main(["data", "build", "--format", "csv", "--input", log, "--columns", "user=uid,item=iid,time=ts,rating=r",
               "--out", str(out), "--max-seq-len", "3", "--min-rating", "2", "--quiet"])
    assert rc == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    ds = load_dataset(out)
    assert ds.path == path and ds.num_users == 4
    assert ds.report["filtered_rating"] == 8  # k = 0 and k = 5 have rating 1
    assert all(n == 3 for n in ds.lengths)  # 4 kept per user, truncated to the 3 most recent
    assert ds.report["truncated_interactions"] == 4 and ds.report["interactions"] == 12
    # the most recent kept: k = 2, 3, 4 (k = 1 dropped by truncation)
    u0 = ds.sequence(ds.user_map.to_dense("u0"))
    assert [ds.item_map.to_original(i) for i in u0["items"]] == ["i2", "i3", "i4"]
    assert u0["timestamps"].tolist() == [200, 300, 400]


def test_data_build_module_entry_point_synthetic(tmp_path):
    out = tmp_path / "syn"
    proc = subprocess.run([sys.executable, "-m", "recsys_jax.cli", "data", "build", "--out", str(out),
                           "--num-users", "30", "--num-items", "200", "--seed", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "build report:" in proc.stdout and "users: 30" in proc.stdout
    ds = load_dataset(out)
    assert ds.num_users == 30 and ds.report["source"]["format"] == "synthetic"


def test_data_build_errors_exit_2_with_one_line(write, tmp_path, capsys):
    bad = write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3\n")
    assert main(["data", "build", "--input", bad, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{bad}:2:" in err and len(err.splitlines()) == 1
    # skipping bad lines lets the build through
    assert main(["data", "build", "--input", bad, "--out", str(tmp_path / "o"), "--skip-bad-lines", "--quiet"]) == 0
    assert load_dataset(tmp_path / "o").report["bad_lines_skipped"] == 1
    assert main(["data", "build", "--input", str(tmp_path / "log.json"), "--out", str(tmp_path / "p")]) == 2
    assert "pass --format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: unknown format
        main(["data", "build", "--format", "xml", "--out", str(tmp_path / "q")])
    assert e.value.code == 2


def test_data_build_event_datasets(write, tmp_path, capsys):
    rc = main(["data", "build", "--format", "marketplace", "--num-users", "30", "--seed", "2", "--out",
               str(tmp_path / "sim"), "--drop-actions", "impression", "--attribution", "linear",
               "--attribution-window", "2d", "--quiet"])
    assert rc == 0
    ds = load_dataset(tmp_path / "sim")
    assert ds.path.endswith(os.path.join("sim", "events", "1.0.0")) and ds.num_users == 30
    att = ds.report["attribution"]
    assert (att["rule"], att["window_s"]) == ("linear", 2 * 86400) and ds.report["actions_kept"]["impression"] == 0
    log = write(tmp_path / "ev.csv", "uid,iid,t,kind,page\nu1,a,1,click,home\nu1,b,2,buy,search\n")
    rc = main(["data", "build", "--format", "csv", "--input", log, "--events", "--out", str(tmp_path / "csv"),
               "--columns", "user=uid,item=iid,time=t,action=kind,surface=page", "--actions", "click,buy",
               "--quiet"])
    assert rc == 0
    ds = load_dataset(tmp_path / "csv")
    assert ds.events["actions"] == ["click", "buy"] and ds.events["surfaces"] == ["home", "search"]
    assert ds.report["attribution"] is None  # no conversion action in the vocabulary
    ratings = write(tmp_path / "ratings.dat", "1::10::5::1\n1::11::3::2\n", encoding="iso-8859-1")
    assert main(["data", "build", "--input", ratings, "--events", "--rating-behaviours", "--out",
                 str(tmp_path / "ml"), "--quiet"]) == 0
    ds = load_dataset(tmp_path / "ml")
    assert [ds.events["actions"][a] for a in ds.sequence(0)["actions"]] == ["like", "view"]
    capsys.readouterr()


def test_data_build_event_errors(write, tmp_path, capsys):
    log = write(tmp_path / "ev.csv", "uid,iid\nu1,a\n")
    rc = main(["data", "build", "--format", "csv", "--input", log, "--events", "--out", str(tmp_path / "o"),
               "--columns", "user=uid,item=iid,action=kind", "--quiet"])
    assert rc != 0
    assert "no column 'kind' for 'action'; the table has columns ['uid', 'iid']" in capsys.readouterr().err
    rc = main(["data", "build", "--format", "marketplace", "--out", str(tmp_path / "o"), "--num-users", "5",
               "--attribution-window", "soon", "--quiet"])
    assert rc != 0 and "attribution window 'soon'" in capsys.readouterr().err
