"""Data for the small models: Planetoid files, synthetic and bundled graphs, sklearn sets,
text classification, and the encoder / encoder-decoder corpus tasks."""

import collections
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from bitjax.data import graphs, splits, tabular, text_classification, text_tasks
from bitjax.data.tokenizers import ByteTokenizer

TOKENIZER = ByteTokenizer()


def write_planetoid(data_dir, name, rng, *, num_features=6, num_classes=3, num_train=4,
                    num_allx=10, test_ids=(13, 10, 12, 15), edges=None):
  """Files in the exact Kipf/Yang layout: csr x/tx/allx, one-hot y/ty/ally, a
  defaultdict graph (pickled at protocol 2, as Python 2 wrote them) and test.index
  in tx's row order. Ids 11 and 14 are left out of the test set, like CiteSeer's.
  Returns the node features and labels the loader should produce."""
  test_ids = np.asarray(test_ids)
  num_nodes = test_ids.max() + 1
  features = (rng.random((num_nodes, num_features)) < 0.4).astype(np.float32)
  labels = rng.integers(0, num_classes, num_nodes)
  missing = np.setdiff1d(np.arange(num_allx, num_nodes), test_ids)
  features[missing], labels[missing] = 0, -1
  one_hot = np.eye(num_classes, dtype=np.float32)
  adjacency = collections.defaultdict(list)
  for a, b in edges if edges is not None else rng.integers(0, num_nodes, (20, 2)):
    adjacency[int(a)].append(int(b))
    adjacency[int(b)].append(int(a))
  parts = {
      "x": sp.csr_matrix(features[:num_train]), "y": one_hot[labels[:num_train]],
      "allx": sp.csr_matrix(features[:num_allx]), "ally": one_hot[labels[:num_allx]],
      "tx": sp.csr_matrix(features[test_ids]), "ty": one_hot[labels[test_ids]],
      "graph": adjacency,
  }
  for part, value in parts.items():
    with open(os.path.join(data_dir, f"ind.{name}.{part}"), "wb") as f:
      pickle.dump(value, f, protocol=2)
  with open(os.path.join(data_dir, f"ind.{name}.test.index"), "w") as f:
    f.write("\n".join(str(i) for i in test_ids) + "\n")
  return features, labels, adjacency


def test_planetoid_files_round_trip(tmp_path, rng):
  features, labels, adjacency = write_planetoid(tmp_path, "citeseer", rng)
  graph = graphs.load_planetoid("citeseer", str(tmp_path))
  np.testing.assert_array_equal(graph.features, features)
  np.testing.assert_array_equal(graph.labels, labels)
  assert graph.num_classes == 3 and graph.labels[[11, 14]].tolist() == [-1, -1]
  np.testing.assert_array_equal(np.flatnonzero(graph.train_mask), np.arange(4))
  np.testing.assert_array_equal(np.flatnonzero(graph.val_mask), np.arange(4, 10))
  np.testing.assert_array_equal(np.flatnonzero(graph.test_mask), [10, 12, 13, 15])
  expected = {(a, b) for a, ns in adjacency.items() for b in ns if a != b}
  edges = set(zip(graph.senders.tolist(), graph.receivers.tolist()))
  assert edges == expected and len(edges) == graph.num_edges  # no self loops, no duplicates


def test_padded_graph_keeps_the_graph_and_masks_the_rest(tmp_path, rng):
  write_planetoid(tmp_path, "cora", rng)
  graph = graphs.load_planetoid("cora", str(tmp_path))
  arrays = graphs.padded(graph, num_nodes=32, num_edges=64)
  assert arrays["features"].shape == (32, 6) and arrays["senders"].shape == (64,)
  assert arrays["edge_mask"].sum() == graph.num_edges and not arrays["train_mask"][16:].any()
  assert (arrays["labels"][16:] == -1).all()
  with pytest.raises(ValueError, match="does not fit in 8 nodes"):
    graphs.padded(graph, num_nodes=8)


def _corrupt(tmp_path, part, data):
  path = tmp_path / f"ind.cora.{part}"
  if data is None:
    path.unlink()
  else:
    path.write_bytes(data if isinstance(data, bytes) else pickle.dumps(data, protocol=2))
  return str(path)


class _Shell:
  def __reduce__(self):
    return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("part, data, problem", [
    ("ty", None, "file not found"),
    ("x", b"\x80\x02garbage", "not a readable pickle"),
    ("x", _Shell(), "refusing to load posix.system"),
    ("tx", "a string", "expected a 2-D matrix, got str"),
    ("ty", np.eye(3, dtype=np.float32)[[0, 1]], "2 label rows for the 4 rows of"),
    ("allx", sp.csr_matrix(np.ones((10, 5))), "5 columns"),
    ("ally", np.full((10, 3), 0.5, np.float32), "labels are not one-hot rows"),
    ("graph", [[0, 1]], "expected a dict of neighbour lists, got list"),
    ("graph", {0: [99]}, "node id 99 is outside the 16 nodes"),
    ("test.index", b"10\nabc\n", "expected one integer node index per line"),
    ("test.index", b"10\n12\n13\n", "3 indices for the 4 rows of"),
    ("test.index", b"10\n12\n13\n3\n", "test node 3 overlaps the 10 nodes"),
])
def test_malformed_planetoid_file_is_named(tmp_path, rng, part, data, problem):
  write_planetoid(tmp_path, "cora", rng)
  path = _corrupt(tmp_path, part, data)
  with pytest.raises(graphs.PlanetoidFormatError) as info:
    graphs.load_planetoid("cora", str(tmp_path))
  assert str(info.value).startswith(path + ":"), str(info.value)
  assert problem in str(info.value)


def test_contextual_sbm_is_cora_shaped_and_deterministic():
  graph = graphs.contextual_sbm(num_nodes=700, num_features=140, seed=3)
  again = graphs.contextual_sbm(num_nodes=700, num_features=140, seed=3)
  np.testing.assert_array_equal(graph.senders, again.senders)
  np.testing.assert_array_equal(graph.features, again.features)
  assert graph.num_classes == 7 and graph.features.shape == (700, 140)
  homophily = (graph.labels[graph.senders] == graph.labels[graph.receivers]).mean()
  assert abs(homophily - 0.81) < 0.05
  assert abs(graph.num_edges / 700 - 3.9) < 0.3  # both directions: the mean degree
  assert abs(graph.features.sum(1).mean() - 18) < 2
  assert graph.train_mask.sum() == 140 and graph.val_mask.sum() == 500
  assert graph.test_mask.sum() == 700 - 640
  assert not (graph.train_mask & graph.val_mask).any()
  assert (np.bincount(graph.labels[graph.train_mask]) == 20).all()
  assert not np.array_equal(graphs.contextual_sbm(num_nodes=700, num_features=140).senders,
                            graph.senders)


def test_karate_club_offline():
  graph = graphs.karate_club()
  assert graph.num_nodes == 34 and graph.num_edges == 2 * 78 and graph.num_classes == 2
  assert graph.labels[0] == 0 and graph.labels[33] == 1
  masks = graph.train_mask.astype(int) + graph.val_mask + graph.test_mask
  assert (masks == 1).all() and graph.train_mask.sum() == 2


def test_stratified_split_is_deterministic_and_proportional(rng):
  labels = rng.integers(0, 4, 400)
  fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
  parts = splits.stratified_split(labels, fractions, seed=7)
  again = splits.stratified_split(labels, fractions, seed=7)
  other = splits.stratified_split(labels, fractions, seed=8)
  assert all(np.array_equal(parts[k], again[k]) for k in parts)
  assert not np.array_equal(parts["train"], other["train"])
  np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(400))
  for label in range(4):
    members = (labels == label).sum()
    assert abs((labels[parts["train"]] == label).sum() - 0.6 * members) <= 1
  with pytest.raises(ValueError, match="must be >= 0 and sum to 1"):
    splits.stratified_split(labels, {"train": 0.5, "test": 0.3})


@pytest.mark.parametrize("name", tabular.TABULAR_DATASETS)
def test_tabular_datasets_load_offline_with_a_fixed_split(name):
  data, again = tabular.load_tabular(name), tabular.load_tabular(name)
  train = data.splits["train"]
  np.testing.assert_array_equal(train["features"], again.splits["train"]["features"])
  np.testing.assert_allclose(train["features"].mean(0), 0, atol=1e-5)
  sizes = {k: len(v["labels"]) for k, v in data.splits.items()}
  assert sizes["train"] > sizes["test"] > sizes["validation"] > 0
  overall = np.bincount(np.concatenate([s["labels"] for s in data.splits.values()]))
  share = np.bincount(train["labels"], minlength=data.num_classes) / overall
  assert np.abs(share - 0.7).max() < 0.05
  with pytest.raises(ValueError, match="config.data.name='iris' is not one of"):
    tabular.load_tabular("iris")


def write_text_tree(root, rng):
  """Three classes of files with class-specific words; one top-level file to skip."""
  for label, word in (("alpha", "apple"), ("beta", "banana"), ("gamma", "cherry")):
    for i in range(10):
      text = " ".join(rng.choice([word, "shared", "common", f"{word}_{i}"], 60))
      (root / label / f"f{i}.txt").parent.mkdir(parents=True, exist_ok=True)
      (root / label / f"f{i}.txt").write_text(text)
  (root / "tiny").mkdir()
  (root / "tiny" / "only.txt").write_text("too few files")
  (root / "top.txt").write_text("not in a class directory")


def test_directory_classification_and_tfidf(tmp_path, rng):
  write_text_tree(tmp_path, rng)
  examples = text_classification.directory_classification(str(tmp_path), "**/*.txt",
                                                          chunk_chars=100)
  assert examples.class_names == ("alpha", "beta", "gamma")
  again = text_classification.directory_classification(str(tmp_path), "**/*.txt",
                                                       chunk_chars=100)
  assert examples.splits["test"]["paths"] == again.splits["test"]["paths"]
  files = {name: set(split["paths"]) for name, split in examples.splits.items()}
  assert not files["train"] & files["test"] and not files["train"] & files["validation"]
  for split in examples.splits.values():
    for path, label in zip(split["paths"], split["labels"]):
      assert examples.class_names[label] == path.split("/")[0]
  data = text_classification.tfidf(examples, max_features=50)
  train = data.splits["train"]["features"]
  assert sp.issparse(train) and train.dtype == np.float32 and data.input_dim <= 50
  np.testing.assert_allclose(sp.linalg.norm(train, axis=1), 1.0, rtol=1e-5)
  counts = text_classification.tfidf(examples, binary=True).splits["test"]["features"]
  assert set(np.unique(counts.data)) == {1.0}
  with pytest.raises(ValueError, match="a classification needs 2"):
    text_classification.directory_classification(str(tmp_path), "**/*.txt", min_files=11)


def test_stdlib_package_task_is_real_and_deterministic():
  examples = text_classification.stdlib_packages(max_classes=3, chunk_chars=4000,
                                                 max_chunks_per_file=1)
  assert len(examples.class_names) == 3 and "test" not in examples.class_names
  again = text_classification.stdlib_packages(max_classes=3, chunk_chars=4000,
                                              max_chunks_per_file=1)
  assert examples.splits["train"]["paths"] == again.splits["train"]["paths"]
  assert all(len(examples.splits[s]["texts"]) > 0 for s in ("train", "validation", "test"))


def test_masked_lm_chooses_only_real_tokens(rng):
  # Long enough that about 60 tokens are chosen: the 80% [MASK] share is then stable.
  tokens, mask = text_tasks.encode_padded(TOKENIZER, ["a" * 400, "short", "xy"], 512)
  batch = text_tasks.mask_tokens(tokens, mask, TOKENIZER, rng)
  chosen = batch["targets"] != text_tasks.IGNORE_LABEL
  assert not (chosen & ~mask).any() and chosen.any(1).all()
  np.testing.assert_array_equal(batch["targets"][chosen], tokens[chosen])
  np.testing.assert_array_equal(batch["tokens"][~chosen], tokens[~chosen])
  assert (batch["tokens"][chosen] == text_tasks.extra_id(TOKENIZER, 0)).mean() > 0.5


def test_span_corruption_hides_spans_behind_sentinels(rng):
  ids = TOKENIZER.encode("def add(a, b):\n    return a + b  # the sum of two numbers")
  inputs, targets = text_tasks.span_corrupt(ids, TOKENIZER, rng, noise_density=0.3)
  assert inputs[-1] == targets[-1] == TOKENIZER.eos_id
  sentinels = {text_tasks.extra_id(TOKENIZER, k) for k in range(1, 33)}
  spans, current = {}, None
  for token in targets[:-1]:
    if token in sentinels:
      current = spans.setdefault(int(token), [])
    else:
      current.append(int(token))
  restored = [t for s in inputs[:-1] for t in (spans[int(s)] if s in sentinels else [int(s)])]
  np.testing.assert_array_equal(restored, ids)
  assert abs(sum(map(len, spans.values())) - 0.3 * len(ids)) <= 1


def test_docstring_pairs_and_seq2seq_arrays():
  source = '''
def area(width, height):
    """Area of a rectangle.

    More text.
    """
    return width * height

async def nothing():
    """Only a docstring."""

def undocumented():
    return 1
'''
  pairs = text_tasks.docstring_pairs(source)
  assert pairs == [("def area(width, height):\n    return width * height",
                    "Area of a rectangle.")]
  assert text_tasks.docstring_pairs("def broken(:") == []
  arrays = text_tasks.text_pairs(pairs, TOKENIZER, input_len=64, target_len=8)
  np.testing.assert_array_equal(arrays["decoder_inputs"][:, 1:], arrays["targets"][:, :-1])
  assert arrays["decoder_inputs"][0, 0] == TOKENIZER.bos_id
  assert arrays["target_mask"].all()  # "Area of..." fills the 8 target positions
  assert arrays["input_mask"].sum() == len(pairs[0][0]) + 1  # the code, then EOS

