"""Open-set decisions: the threshold under which `identify` answers ``unknown``, picked from held-out clips.

Each held-out clip of an enrolled speaker gives one *genuine* score (against its own speaker) and
one *impostor* score: the best score among all the other enrolled speakers, which is what the clip
would score if its speaker were not enrolled at all. The threshold at a target false-alarm rate
(FAR) accepts that fraction of impostors; the detection-and-identification rate (DIR) is the share
of clips whose top answer is right *and* clears it.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np

from voxaug.embeddings.index import SpeakerIndex, vote, voters
from voxaug.embeddings.scoring import eer_and_min_dcf
from voxaug.errors import VoxaugError

EXHAUSTIVE_UP_TO = 5000
"""Indexes up to this many speakers are scored against every speaker; larger ones against the top 50."""


def check_far(target_far: float) -> float:
    if isinstance(target_far, bool) or not isinstance(target_far, (int, float)) or not 0 < target_far < 1:
        raise VoxaugError(f"--target-far must be a rate in (0, 1), got {target_far!r}")
    return float(target_far)


def open_set_scores(index: SpeakerIndex, embeddings: np.ndarray, labels: list[str], score_norm: str,
                    cohort_top_k: int | None = None) -> dict[str, np.ndarray]:
    """Per clip: the genuine score, the impostor score (the first other speaker in `identify`'s ranking),
    the top answer's score (what `identify` compares with the threshold) and whether that answer is right.

    Clips whose speaker is not enrolled are refused: they have no genuine score.
    """
    check_enrolled(index, labels)
    labels = index.spelled(labels)  # a folder's José, e and a combining accent, is the José the index spells as one
    if len(index.speakers) < 2:
        raise VoxaugError(f"calibration needs at least two enrolled speakers, and the index holds "
                          f"{len(index.speakers)}: with no other speaker, no clip has an impostor score")
    if index.mode == "utterance":
        if score_norm == "asnorm":
            index.check_asnorm()  # refused by utterance
        return _utterance_scores(index, embeddings, labels)
    depth = len(index.speakers) if len(index.speakers) <= EXHAUSTIVE_UP_TO else 50
    # each clip stands in for a voice never heard, so AS-norm leaves its own speaker's cohort entries out:
    # calibrating on the validation split, the cohort holds the very clip
    results = index.search(embeddings, depth, score_norm=score_norm, cohort_top_k=cohort_top_k, query_speakers=labels)
    genuine, impostor, top, correct = [], [], [], []
    for label, ranked in zip(labels, results):
        scores = dict(ranked)
        genuine.append(scores.get(label, min(scores.values())))  # beyond the searched depth: no higher than those found
        impostor.append(next((score for speaker, score in ranked if speaker != label), min(scores.values())))
        top.append(ranked[0][1])
        correct.append(ranked[0][0] == label)
    return {"genuine": np.array(genuine), "impostor": np.array(impostor), "top": np.array(top),
            "correct": np.array(correct)}


def check_enrolled(index: SpeakerIndex, labels: list[str]) -> None:
    """Refuses clips of speakers the index does not hold: they have no genuine score."""
    missing = sorted(set(index.spelled(labels)) - set(index.speakers))
    if missing:
        raise VoxaugError(f"speakers {missing[:5]}{' ...' if len(missing) > 5 else ''} have clips but are not "
                          "enrolled in the index")


def _utterance_scores(index: SpeakerIndex, embeddings: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """``open_set_scores`` by utterance: ``identify`` answers the speaker most voted for among the nearest
    ``voters(1)`` utterances, with its best score; the impostor score is that answer with the clip's own
    speaker's utterances taken out, as if it had never been enrolled."""
    depth = voters(1) + max(index.counts.values())  # enough utterances of others once the own speaker's are out
    genuine, impostor, top, correct = [], [], [], []
    for label, hits in zip(labels, index.nearest_utterances(embeddings, depth)):
        answer = vote(hits[:voters(1)])[0]
        own = [score for speaker, score in hits[:voters(1)] if speaker == label]  # the score identify would show
        genuine.append(max(own) if own else min(score for _, score in hits))
        impostor.append(vote([hit for hit in hits if hit[0] != label][:voters(1)])[0][1])
        top.append(answer[1])
        correct.append(answer[0] == label)
    return {"genuine": np.array(genuine), "impostor": np.array(impostor), "top": np.array(top),
            "correct": np.array(correct)}


THRESHOLD_MARGIN = 1e-4
"""How far above the highest impostor score it rejects a threshold is placed, relative to that score:
``identify`` embeds a clip alone and ``evaluate`` in a batch, and the two scores differ by about 1e-6 of
their size, which must not turn the rejected impostor into an accepted one."""


def threshold_at_far(impostor: np.ndarray, target_far: float, *others: np.ndarray) -> float:
    """A threshold that accepts at most ``target_far`` of the impostor scores (accept: score >= t), just above
    the highest impostor score it rejects: by ``THRESHOLD_MARGIN``, or by half the gap to the next higher score
    among the impostor and ``others`` (the genuine and top scores) if that is smaller, so that every count on
    these scores is that of the lowest such threshold."""
    ordered = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    allowed = allowed_false_alarms(len(ordered), target_far)
    if allowed >= len(ordered):
        return float(ordered[-1])
    rejected = ordered[allowed]
    if not np.isfinite(rejected):
        return float(np.nextafter(rejected, np.inf))
    scores = np.concatenate([ordered, *(np.asarray(other, dtype=np.float64) for other in others)])
    above = scores[scores > rejected]
    margin = THRESHOLD_MARGIN * max(1.0, abs(rejected))
    if above.size:
        margin = min(margin, (above.min() - rejected) / 2)
    return float(max(rejected + margin, np.nextafter(rejected, np.inf)))


def allowed_false_alarms(impostors: int, target_far: float) -> int:
    """The most of ``impostors`` scores a threshold at ``target_far`` may accept: the largest k with k / n <= target,
    as FAR is computed."""
    if impostors < 1:
        raise VoxaugError("a threshold at a false-alarm rate needs at least one impostor score, got none")
    allowed = int(np.floor(target_far * impostors))
    if (allowed + 1) / impostors <= target_far:  # 0.58 * 50 is 28.999999999999996 in floating point
        allowed += 1
    elif allowed / impostors > target_far:  # and the product can round up past a target just below k / n
        allowed -= 1
    return allowed


def impostors_for_one_false_alarm(target_far: float) -> int:
    """The fewest impostor scores n at which ``target_far`` allows one false alarm (1 / n <= target, as FAR is
    computed), by bisection: counting up from a rounded 1 / target took 283 million steps at FAR 1e-25, and 1 / target
    overflows for the smallest rates (5e-324)."""
    fewest_known_too_few, enough = 0, math.ceil(1 / Fraction(target_far))  # exactly 1 / n <= target: so in floats too
    while enough - fewest_known_too_few > 1:
        middle = (fewest_known_too_few + enough) // 2
        if 1 / middle <= target_far:
            enough = middle
        else:
            fewest_known_too_few = middle
    return enough


def far_measurable(clips: int, target_far: float) -> bool:
    """Whether ``clips`` impostor scores (one per held-out clip) are enough for ``target_far`` to allow one false
    alarm, so that a threshold picked from them measures that rate rather than merely clearing the highest score."""
    return allowed_false_alarms(clips, target_far) >= 1


def unresolved_far(record: dict) -> str | None:
    """Why a calibration's threshold measures no false-alarm rate, or None: from fewer impostor scores (one per clip)
    than the target FAR needs to allow a single false alarm, the threshold merely clears the highest of them, as for any
    lower target, so its rate on new voices is unknown; the figures say "at FAR 0.01" all the same."""
    clips, target_far = record["clips"], record["target_far"]
    if far_measurable(clips, target_far):
        return None
    needed = impostors_for_one_false_alarm(target_far)
    return (f"the threshold at FAR {target_far:g} is picked from {clips} impostor scores (one per held-out clip), "
            f"fewer than the {needed} that FAR needs to allow one false alarm: it only clears the highest of them "
            f"(0 of {clips} accepted), so its false-alarm rate is unmeasured; calibrate on more held-out clips or at a "
            "higher --target-far")


def calibrate(scores: dict[str, np.ndarray], target_far: float, score_norm: str, source: str,
              cohort_top_k: int | None = None, enrolled: dict | None = None) -> dict:
    """The calibration record the index's sidecar stores, with what it predicts for enrolled speakers
    (``cohort_top_k``: the K of AS-norm scores, which the threshold holds for; ``enrolled``: the index's
    ``enrolled_record()``, so that identify can tell when the speakers it was picked against change)."""
    check_far(target_far)
    genuine, impostor, correct = scores["genuine"], scores["impostor"], scores["correct"]
    if len(genuine) < 2:
        raise VoxaugError(f"calibration needs at least two held-out clips of enrolled speakers, got {len(genuine)}")
    threshold = threshold_at_far(impostor, target_far, genuine, scores["top"])
    equal_error = eer_and_min_dcf(np.concatenate([genuine, impostor]),
                                  np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]))
    top = scores["top"]
    return {
        "value": threshold,
        "score_norm": score_norm,
        "target_far": target_far,
        "far": float((impostor >= threshold).mean()),
        "dir": float((correct & (genuine >= threshold)).mean()),
        "acceptance": float((top >= threshold).mean()),
        "top1": float(correct.mean()),
        "eer": equal_error["eer"],
        "eer_threshold": equal_error["eer_threshold"],
        "clips": int(len(genuine)),
        "far_measured": far_measurable(len(impostor), target_far),  # identify says when it is not
        "source": source,
        "date": time.strftime("%Y-%m-%d"),
    } | ({"cohort_top_k": cohort_top_k} if score_norm == "asnorm" and cohort_top_k is not None else {}) \
      | ({"enrolled": enrolled} if enrolled is not None else {})
