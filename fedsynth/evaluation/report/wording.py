"""The report's plain-language wording: what each mode did, the classifiers' names, what each figure means."""

from __future__ import annotations

MODES = {
    "substitution": "Data substitution: each hospital trained an image generator on its own X-rays and sent "
                    "only synthetic images; the server trained the classifier on those synthetic images alone.",
    "federated": "Federated generator: the hospitals trained one shared image generator by federated averaging "
                 "(only model weights travelled); the server sampled it and trained the classifier on those "
                 "synthetic images alone.",
    "fedavg-classifier": "Baseline, classic federated learning: the classifier itself was trained by federated "
                         "averaging on the hospitals' real X-rays (only model weights travelled).",
    "centralized-real": "Baseline, centralized: all hospitals' real training X-rays were pooled in one place. "
                        "Possible only in a simulation; the upper bound the other modes are measured against.",
}

MAIN_LABEL = {
    "substitution": "synthetic only (server)",
    "federated": "synthetic only, federated generator (server)",
    "fedavg-classifier": "federated averaging on real (server)",
    "centralized-real": "real, pooled centrally (server)",
}

BASELINES = {
    "trtr": ("site's own real images", "each site's classifier trained on its own real training images "
                                       "(train-real-test-real)"),
    "real_plus_synthetic": ("site's real + synthetic", "each site's classifier trained on its own real images "
                                                       "plus the pooled synthetic sample (augmentation)"),
}

EXPLAIN = {
    "auroc": "AUROC: the chance that the classifier scores a random pneumonia X-ray higher than a random normal "
             "one. 0.5 is a coin toss, 1.0 is perfect.",
    "aupr": "AUPR (average precision): how well pneumonia cases rank above normal ones, judged on the pneumonia "
            "cases found; its chance level is the share of pneumonia in the test set.",
    "sens": "Sensitivity: share of pneumonia X-rays the classifier flags. Specificity: share of normal X-rays it "
            "leaves unflagged. Both at the decision threshold fixed before testing (never tuned on the test "
            "images).",
    "ci": "Brackets give the {level:.0%} confidence interval: stratified bootstrap for AUROC and AUPR, Wilson "
          "intervals for sensitivity and specificity. Wide intervals mean few test images.",
}
