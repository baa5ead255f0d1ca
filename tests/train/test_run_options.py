"""RunOptions: how a run is carried out, checked when made; train() and train_mnist() take it whole and answer
a run option given as a keyword (the calls before RunOptions existed) with the RunOptions to write."""

import dataclasses
import pathlib

import pytest

import deqkit
from deqkit.models import mnist_model
from deqkit.train import RunOptions, TrainConfig, train, train_mnist
from deqkit.train import __main__ as cli

#: (keywords, exception, fragment of its message): every value RunOptions refuses.
REFUSED = [
    ({"start": "continue"}, ValueError, "RunOptions.start must be one of 'new', 'resume', 'overwrite'"),
    ({"start": True}, ValueError, "RunOptions.start must be one of 'new', 'resume', 'overwrite'"),
    ({"device": "tpu"}, ValueError, "RunOptions.device must be one of 'auto', 'cpu', 'cuda'"),
    ({"device": None}, ValueError, "RunOptions.device must be one of"),
    ({"checkpoint_every": -1}, ValueError, "RunOptions.checkpoint_every must be an integer >= 0"),
    ({"checkpoint_every": 2.0}, ValueError, "RunOptions.checkpoint_every must be an integer >= 0"),
    ({"checkpoint_every": True}, ValueError, "got True"),
    ({"progress": "yes"}, TypeError, "RunOptions.progress must be True or False, got 'yes'"),
    ({"progress": 1}, TypeError, "RunOptions.progress must be True or False, got 1"),
    ({"tensorboard": None}, TypeError, "RunOptions.tensorboard must be True or False, got None"),
    ({"out": 3}, TypeError, "RunOptions.out must be a run folder's path (a str or pathlib.Path) or None"),
    ({"out": b"runs"}, TypeError, "RunOptions.out must be a run folder's path"),
    ({"out": ""}, ValueError, "RunOptions.out is '': give the run folder's path, or None"),
    # the choices that read or write the run folder need one
    ({"start": "resume"}, ValueError, "RunOptions(start='resume') needs out=, the run folder that holds checkpoint.pt"),
    ({"start": "overwrite"}, ValueError, "needs out=, the run folder whose files it replaces: give out=FOLDER, or set"),
    ({"checkpoint_every": 5}, ValueError, "RunOptions(checkpoint_every=5) needs out="),
    ({"tensorboard": True}, ValueError, "RunOptions(tensorboard=True) needs out=, the run folder (the logs go to"),
]


@pytest.mark.parametrize(("settings", "error", "fragment"), REFUSED, ids=[repr(r[0]) for r in REFUSED])
def test_refused_values_name_the_setting_and_the_fix(settings, error, fragment):
    with pytest.raises(error) as info:
        RunOptions(**settings)
    assert fragment in str(info.value)


def test_accepted_values_and_what_is_kept(tmp_path):
    options = RunOptions(str(tmp_path), start="resume", device="cpu", checkpoint_every=3, progress=False)
    assert options.out == tmp_path and isinstance(options.out, pathlib.Path)  # a str is kept as a Path
    assert (options.start, options.device, options.checkpoint_every, options.progress) == ("resume", "cpu", 3, False)
    assert RunOptions() == RunOptions(None, "new", "auto", 0, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.start = "new"  # type: ignore[misc]
    # a changed copy is checked like a new one
    assert dataclasses.replace(options, start="overwrite").start == "overwrite"
    with pytest.raises(ValueError, match=r"RunOptions\(start='resume'\) needs out="):
        dataclasses.replace(options, out=None)


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        ({"resume": True}, "train() takes its run options as options=RunOptions(start='resume', ...)"),
        ({"overwrite": True}, "options=RunOptions(start='overwrite', ...)"),
        ({"out": "runs/x", "resume": True}, "options=RunOptions(out='runs/x', start='resume', ...)"),
        ({"out": pathlib.Path("runs/x")}, "options=RunOptions(out='runs/x', ...)"),
        ({"progress": False, "tensorboard": True}, "options=RunOptions(progress=False, tensorboard=True, ...)"),
        ({"device": "cpu", "checkpoint_every": 2}, "options=RunOptions(device='cpu', checkpoint_every=2, ...)"),
        ({"start": "resume"}, "options=RunOptions(start='resume', ...), not as keywords (start=)"),
    ],
)
def test_old_keywords_say_which_run_options_to_write(keywords, expected):
    # refused before anything else is looked at: the model and data here are not even made
    with pytest.raises(TypeError) as info:
        train(None, None, None, None, **keywords)
    assert expected in str(info.value) and "deqkit.train.RunOptions" in str(info.value)
    with pytest.raises(TypeError) as info:
        train_mnist(epochs=1, **keywords)
    assert expected.replace("train()", "train_mnist()") in str(info.value)


def test_the_old_flags_are_named_with_their_start():
    with pytest.raises(TypeError, match=r"not as keywords \(resume=\); .*resume=True is start='resume' there"):
        train(None, None, None, None, resume=True)
    with pytest.raises(TypeError, match=r"RunOptions\(start='new', \.\.\.\)"):
        train(None, None, None, None, resume=False)


def test_options_must_be_run_options(data):
    config = TrainConfig(model="seed", epochs=1, batch_size=32)
    with pytest.raises(TypeError, match="options must be a deqkit.train.RunOptions .* got str 'runs/x'"):
        train(mnist_model("seed"), *data, config, "runs/x")
    with pytest.raises(TypeError, match="options must be a deqkit.train.RunOptions .* got dict"):
        train_mnist(config, options={"progress": False}, train_set=data[0], test_set=data[1])


def test_the_epoch_warning_points_at_the_caller_of_train(data):
    """report_epoch's stacklevel counts train()'s keyword check: the warning names this file, not loop.py."""
    config = TrainConfig(model="seed", epochs=1, batch_size=32, seed=0, model_options={"max_steps": 2})
    with pytest.warns(deqkit.ConvergenceWarning, match="did not reach the solver tolerance") as caught:
        train(mnist_model("seed", seed=0, max_steps=2), *data, config, RunOptions(progress=False))
    assert [w.filename for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)] == [__file__]


def test_the_command_line_builds_its_run_options(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["mnist", "--resume", "--checkpoint-every", "4", "--no-progress", "--device", "cpu"])
    options = cli._run_options(parser, args, tmp_path)
    assert options == RunOptions(tmp_path, start="resume", device="cpu", checkpoint_every=4, progress=False)
    args = parser.parse_args(["mnist", "--overwrite", "--tensorboard"])
    assert cli._run_options(parser, args, tmp_path) == RunOptions(tmp_path, start="overwrite", tensorboard=True)


def test_a_home_folder_and_numpy_integers_are_read_as_written(monkeypatch, tmp_path):
    # was: out="~/runs/a" wrote to a folder named "~" in the working directory (the CLI's --out=~/runs/a too),
    # and checkpoint_every=np.int64(5) was refused as "must be an integer"
    import numpy as np

    monkeypatch.setenv("HOME", str(tmp_path))
    assert RunOptions("~/runs/a").out == tmp_path / "runs" / "a"
    options = RunOptions(tmp_path, checkpoint_every=np.int64(5))
    assert options.checkpoint_every == 5 and type(options.checkpoint_every) is int


def test_train_mnist_checks_its_options_before_loading_the_data(monkeypatch):
    # was: options={"out": ...} loaded (or tried to download) MNIST first and failed there, or in train()
    import deqkit.data

    def no_loading(*args, **kwargs):
        raise AssertionError("MNIST was loaded before the options were checked")

    monkeypatch.setattr(deqkit.data, "mnist_datasets", no_loading)
    with pytest.raises(TypeError, match="options must be a deqkit.train.RunOptions"):
        train_mnist(TrainConfig(subset=10), options={"out": "runs/x"})


@pytest.mark.parametrize("callback", [3, "print"])
def test_a_callback_that_cannot_be_called_is_refused_before_training(callback):
    # was: TypeError "'int' object is not callable" from inside the first step, naming no setting
    model = mnist_model("seed", seed=0)
    with pytest.raises(TypeError, match=r"callback must be a callable callback\(info\) or None"):
        train(model, None, None, TrainConfig(), RunOptions(progress=False), callback=callback)


def test_train_mnist_given_its_options_positionally_says_options_is_a_keyword():
    # was: Python's bare "train_mnist() takes from 0 to 1 positional arguments but 2 were given" (train() takes
    # them positionally, so the slip is natural)
    with pytest.raises(TypeError, match=r"train_mnist\(\) takes its RunOptions as a keyword: .*options=RunOptions"):
        train_mnist(TrainConfig(subset=10), RunOptions(progress=False))


def test_the_command_line_reads_its_run_folder_as_run_options_does(monkeypatch, tmp_path, capsys):
    # was: --out=~/run checked and created ./~/run (the CLI's own unexpanded path) while train() wrote to the home
    # folder, so --resume looked for ./~/run/checkpoint.pt; --out "" silently meant the default folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["mnist", "--resume", "--out", "~/run", "--subset", "10"]) == 1
    assert f"no checkpoint at {tmp_path / 'home' / 'run' / 'checkpoint.pt'}" in capsys.readouterr().err
    assert not (tmp_path / "~").exists()
    with pytest.raises(SystemExit):
        cli.main(["mnist", "--out", "", "--subset", "10"])
    assert "RunOptions.out is ''" in capsys.readouterr().err
