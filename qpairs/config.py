"""Training settings: a light module (no torch import) so the CLI can build its flags instantly."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

NATURAL_DUPLICATE_RATE = 0.37  # duplicate rate of the original QQP
KAGGLE_TEST_PRIOR = 0.165  # duplicate rate of the Kaggle test set, as top solutions estimated it
ADAPT_MIN_PAIRS, ADAPT_MIN_PER_CLASS = 50, 10  # the fewest labelled pairs (and of each class) `qpairs adapt` trusts
EVAL_DIR = "qpairs-eval"  # `qpairs evaluate` reports of the bundled model, in the working directory
CHECKPOINT_ROWS = 50_000  # `qpairs score`: rows between resume checkpoints (about a minute of CPU scoring or less)
BACKENDS = ("auto", "torch", "bf16", "onnx", "onnx-int8")  # how a model runs at inference (qpairs.onnxrt)
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "precision": True, "recall": True, "roc_auc": True,
                    "average_precision": True, "log_loss": False, "loss": False}
ENCODERS = ("lstm", "transformer")
PAIR_LOSSES = ("contrastive", "online_contrastive")
TRIPLET_LOSSES = ("triplet", "mnrl")
LOSSES = PAIR_LOSSES + TRIPLET_LOSSES
POOLINGS = ("mean", "max", "cls", "last")
# the values each `qpairs train` option accepts (the flags list them in --help and check them)
TRAIN_CHOICES = {
    "encoder": ENCODERS, "left_encoder": ENCODERS, "right_encoder": ENCODERS, "loss": LOSSES,
    "distance": ("euclidean", "cosine"), "pooling": POOLINGS, "right_pooling": POOLINGS,
    "word_vectors": ("glove", "minilm", "none"), "tokens": ("word", "wordpiece"), "head": ("linear", "residual"),
    "variant": ("siamese", "pseudo"), "left_col": ("title", "body", "content"),
    "right_col": ("title", "body", "content"),
    "body_truncation": ("head", "head_tail", "none"), "negatives": ("random", "tags", "mixed"),
    "triplet_negatives": ("labelled", "random"), "mining": ("none", "batch_hard", "semi_hard"),
    "pair_head": ("none", "classifier", "matching"), "split_by": ("question", "pair"), "balance": ("weight", "subsample", "none"),
    "on_bad_row": ("error", "drop"), "metric": tuple(HIGHER_IS_BETTER), "calibration": ("platt", "isotonic"),
}


def top_layer_defaults(c: "TrainConfig") -> None:
    """--train-top-layers implies transformer encoders (both towers of a pseudo-Siamese model)."""
    if c.freeze_base:
        raise ValueError("--train-top-layers and --freeze-base are exclusive: --freeze-base freezes every layer")
    if c.left_encoder == "lstm" or c.right_encoder == "lstm":
        raise ValueError("--train-top-layers trains transformer layers: it needs transformer towers, not lstm")
    c.encoder = "transformer"


def split_seed(c: "TrainConfig") -> int:
    """The seed that picks a run's validation and test data: --split-seed, else --seed."""
    return c.seed if c.split_seed is None else c.split_seed


@dataclass
class TrainConfig:
    """Every knob of `qpairs train`, with defaults that work."""

    out: str = "runs/lstm"
    data: list[str] = field(default_factory=list)  # empty → the labelled QQP files in ../shared/data
    encoder: str = "lstm"
    epochs: int = 6
    batch_size: int = 128
    lr: float | None = None  # None → 2e-3 for lstm, 2e-5 for transformer
    weight_decay: float = 0.01
    warmup: float = 0.05
    grad_clip: float = 1.0
    loss: str = "contrastive"  # contrastive | online_contrastive | triplet | mnrl (see qpairs.objective)
    margin: float | None = None  # None → 1.0 for contrastive, 0.5 for online_contrastive and triplet
    distance: str | None = None  # None → cosine for online_contrastive (as sentence-transformers), else euclidean
    max_length: int = 40
    seed: int = 0
    split_seed: int | None = None  # None → --seed
    device: str = "auto"
    # data handling
    split_by: str = "question"
    balance: str = "weight"  # weight | subsample | none
    train_pos_rate: float = 0.5
    eval_rate: float = NATURAL_DUPLICATE_RATE
    max_train_pairs: int | None = None
    extra_train: list[str] = field(default_factory=list)  # pair files added to the training split only
    teacher_labels: list[str] = field(default_factory=list)  # pair files with a teacher_probability column
    teacher: str | None = None  # a run directory or bundled model that scores the training pairs (qpairs.distill)
    teacher_unchecked: bool = False  # accept a teacher without saved splits (no leak check possible)
    teacher_fingerprint: str | None = None  # set by training: `model_fingerprint` of --teacher
    distill_weight: float = 0.5  # training target = (1 − w)·label + w·teacher probability, where a teacher has one
    infer_negatives: int = 0  # add up to N non-duplicates per labelled one, inferred by A≁C, A~A' ⇒ A'≁C
    on_bad_row: str = "error"
    # lstm encoder
    embedding_dim: int = 50
    hidden_size: int = 128
    num_layers: int = 1
    pooling: str | None = None  # None → max for lstm, mean for transformer
    projection_dim: int | None = None  # None → 128, but no projection (0) for a fine-tuned transformer
    glove: bool = True  # False: no pretrained word vectors (same as --word-vectors none)
    word_vectors: str = "glove"  # glove (GloVe 6B 50d) | minilm (MiniLM's WordPiece vectors, PCA to embedding_dim) | none
    tokens: str = "word"  # word (vocabulary from the training texts) | wordpiece (MiniLM's 30,522 pieces, no unknowns)
    freeze_embeddings: bool = False  # keep the LSTM's word vectors as initialised (fewer weights to overfit)
    min_freq: int = 2
    dropout: float = 0.1
    # transformer encoder
    base_model: str | None = None
    normalize: bool | None = None  # None → False for lstm, True for transformer
    freeze_base: bool = False  # train only the head on a frozen base (its outputs cached once)
    train_top_layers: int = 0  # N > 0: train only the base's top N layers + head; layer L−N's outputs cached once
    top_layers_lr: float | None = None  # --train-top-layers: learning rate of the trained base layers (None → --lr)
    init_from: str | None = None  # a trained run whose weights the model starts from (qpairs.warmstart)
    head: str = "linear"  # linear projection or residual MLP (starts as the identity)
    embedding_cache: str | None = None  # frozen-base embedding cache dir (None → RUN/embedding_cache)
    # pseudo-Siamese (two unshared encoders) and title/body data (see qpairs.title_body)
    variant: str = "siamese"  # siamese (one shared encoder) | pseudo (left and right encoders, unshared)
    left_encoder: str | None = None  # pseudo: lstm | transformer (None → --encoder)
    right_encoder: str | None = None  # pseudo: lstm | transformer (None → the left encoder's type)
    right_lr: float | None = None  # pseudo: learning rate of the right encoder (None → default of its type)
    right_pooling: str | None = None  # pseudo: pooling of the right encoder (None → --pooling or its type's default)
    right_max_length: int = 128  # tokens of the right side (bodies); a Siamese title/body run uses the larger one
    left_col: str | None = None  # title/body data: column on the left (title); setting it selects title/body data
    right_col: str | None = None  # title/body data: column on the right (body)
    body_truncation: str = "head_tail"  # head | head_tail | none (qpairs.title_body.truncate_words)
    body_max_words: int = 100
    negatives: str = "mixed"  # title/body training negatives: random | tags | mixed
    test_site: str | None = None  # title/body: hold out this site as the test split (train on the others)
    sites: list[str] = field(default_factory=list)  # title/body: use only these sites (empty → all)
    eval_posts: int | None = None  # title/body: at most this many validation and test posts
    # triplet losses and the classifier head (see qpairs.objective and qpairs.triplets)
    triplet_negatives: str = "labelled"  # labelled (the anchor's labelled non-duplicates, else random) | random
    mining: str = "none"  # none | batch_hard | semi_hard: re-pick negatives among the batch's rows
    transitive: bool = True  # add positives by transitivity (A~B, B~C ⇒ A~C)
    max_pairs_per_group: int | None = 1000  # cap on transitive pairs from one duplicate group
    scale: float = 20.0  # mnrl: cosine-similarity scale (1 / temperature)
    pair_head: str = "none"  # none | classifier (logistic on u, v, |u−v|, u∗v) | matching (token states, qpairs.matching)
    pair_head_weight: float = 1.0  # weight of the head's BCE in the loss
    pair_head_hidden: int = 0  # hidden units of the classifier head (0 → logistic, else a one-hidden-layer MLP)
    matching_dim: int = 256  # width of the matching head's comparison layer and MLP
    # loop
    metric: str = "roc_auc"
    patience: int = 2
    calibration: str = "platt"
    threshold: str = "accuracy"  # operating point on validation: accuracy | f1 | precision:P | recall:R
    num_workers: int = 0
    bf16: bool = False  # bf16 autocast in the training steps on a CPU that has AVX-512 BF16 (always on CUDA)
    resume: bool = False
    checkpoint_minutes: float = 10.0  # resumable checkpoint within an epoch this often (0: at epoch ends only)
    progress: bool | None = None  # None → only on a terminal

    def resolved(self) -> "TrainConfig":
        c = TrainConfig(**asdict(self))
        if c.variant not in ("siamese", "pseudo"):
            raise ValueError(f"--variant must be siamese or pseudo, not {c.variant!r}")
        if c.train_top_layers:
            top_layer_defaults(c)
        elif c.top_layers_lr is not None:
            raise ValueError("--top-layers-lr sets the learning rate of the layers --train-top-layers trains: "
                             "give --train-top-layers N with it")
        if c.variant == "pseudo":  # defaults below follow the left encoder; the right one's are set here
            c.left_encoder = c.encoder = c.left_encoder or c.encoder
            c.right_encoder = c.right_encoder or c.left_encoder
            same = c.right_encoder == c.left_encoder
            c.right_lr = c.right_lr or (c.lr if same and c.lr else (2e-3 if c.right_encoder == "lstm" else 2e-5))
            c.right_pooling = c.right_pooling or c.pooling or ("max" if c.right_encoder == "lstm" else "mean")
            if c.normalize is None:  # both sides must agree
                c.normalize = "transformer" in (c.left_encoder, c.right_encoder)
        if c.left_col and c.variant == "siamese":  # one shared encoder sees titles and bodies
            c.max_length = max(c.max_length, c.right_max_length)
        if not c.glove:
            if c.word_vectors not in ("glove", "none"):  # glove is the default, so only another choice conflicts
                raise ValueError(f"--no-glove and --word-vectors {c.word_vectors} conflict: --no-glove means "
                                 "--word-vectors none")
            c.word_vectors = "none"
        if c.word_vectors not in ("glove", "minilm", "none"):
            raise ValueError(f"--word-vectors must be glove, minilm or none, not {c.word_vectors!r}")
        if c.teacher and c.teacher_labels:
            raise ValueError("--teacher and --teacher-labels are exclusive: give the teacher run, or its labels file")
        if c.teacher and c.left_col:
            raise ValueError("--teacher scores question pairs: title/body data (--left-col) has no teacher targets")
        if c.init_from and "lstm" in (c.encoder, c.right_encoder):
            raise ValueError("--init-from takes transformer encoders: a BiLSTM's vocabulary is built from each run's "
                             "own training texts, so another run's word vectors would land on other words")
        if not 0.0 <= c.distill_weight <= 1.0:
            raise ValueError(f"--distill-weight must be in [0, 1], not {c.distill_weight}")
        if c.tokens not in ("word", "wordpiece"):
            raise ValueError(f"--tokens must be word or wordpiece, not {c.tokens!r}")
        if c.tokens == "wordpiece" and c.word_vectors == "glove":
            raise ValueError("--tokens wordpiece has no GloVe vectors: use --word-vectors minilm (MiniLM's own piece "
                             "vectors) or none")
        if c.word_vectors == "glove" and "lstm" in (c.encoder, c.left_encoder, c.right_encoder) \
                and c.embedding_dim != 50:
            raise ValueError(f"GloVe vectors are 50-d, so --embedding-dim {c.embedding_dim} cannot apply: pass "
                             "--word-vectors minilm (any width) or --no-glove (learnt from scratch), or leave it at 50")
        c.distance = c.distance or ("cosine" if c.loss == "online_contrastive" else "euclidean")
        lstm = c.encoder == "lstm"
        c.lr = c.lr if c.lr is not None else (2e-3 if lstm else 2e-5)
        c.pooling = c.pooling or ("max" if lstm else "mean")
        c.normalize = c.normalize if c.normalize is not None else (not lstm)
        if c.projection_dim is None:  # a fine-tuned transformer keeps its pretrained embedding space
            c.projection_dim = 0 if c.encoder == "transformer" and not c.freeze_base else 128
        from .operating_point import parse_rule

        c.threshold = str(parse_rule(c.threshold))
        if c.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"--metric must be one of {sorted(HIGHER_IS_BETTER)}")
        for option, rate in (("--train-pos-rate", c.train_pos_rate), ("--eval-rate", c.eval_rate)):
            if rate is not None and not 0.0 < rate < 1.0:
                raise ValueError(f"{option} is a duplicate rate: it must lie strictly between 0 and 1, not {rate}")
        check_ranges(c)
        return c


# options checked before any work: name → (lowest, highest); None leaves that end open
RANGES = {"batch_size": (1, None), "epochs": (1, None), "max_train_pairs": (1, None), "max_length": (1, None),
          "right_max_length": (1, None), "embedding_dim": (1, None), "hidden_size": (1, None), "num_layers": (1, None),
          "projection_dim": (0, None), "pair_head_hidden": (0, None), "matching_dim": (1, None), "min_freq": (1, None),
          "body_max_words": (1, None), "infer_negatives": (0, None), "patience": (0, None), "dropout": (0.0, 1.0),
          "lr": (0.0, None), "right_lr": (0.0, None), "top_layers_lr": (0.0, None), "weight_decay": (0.0, None),
          "warmup": (0.0, 1.0), "grad_clip": (0.0, None), "margin": (0.0, None), "scale": (0.0, None),
          "pair_head_weight": (0.0, None), "checkpoint_minutes": (0.0, None), "max_pairs_per_group": (1, None), "num_workers": (0, None)}
EXCLUDED_END = {"dropout": 1.0, "margin": 0.0, "scale": 0.0}  # an end of the range that is itself out


def check_ranges(c: TrainConfig) -> None:
    """A ValueError naming the first option (`RANGES`) outside its range, before any data is read."""
    for name, (low, high) in RANGES.items():
        value, out = getattr(c, name), EXCLUDED_END.get(name)
        if value is not None and (value < low or high is not None and value > high or value == out):
            if high is None:
                bounds = f"{'above' if out == low else 'at least'} {low:g}"
            else:
                bounds = f"in [{low:g}, {high:g}{')' if out == high else ']'}"
            raise ValueError(f"--{name.replace('_', '-')} must be {bounds}, not {value}")
