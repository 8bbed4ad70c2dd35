"""HaGRID gesture names and the gesture phrase each caption must carry.

The six Hand1000 gestures use the phrases of the paper's rewritten captions (seed 000, Fig. 2-8).
`{his}` is filled with his/her/their to agree with the person the caption names.
"""

from __future__ import annotations

from handsynth.errors import HandsynthError

NO_GESTURE = "no_gesture"  # HaGRID's label for a second, idle hand

# Every HaGRID v2 gesture class (v1 has 18 of them), with its phrase.
PHRASE_TEMPLATES = {
    # the paper's six
    "call": "making phone call hand gesture",
    "four": "making four fingers up hand gesture",
    "like": "giving the thumbs up",
    "mute": "putting {his} finger on {his} lips",
    "ok": "making an ok sign with {his} hands",
    "palm": "giving an open palm with five fingers isolated",
    # the rest of HaGRID, in the same style
    "dislike": "giving the thumbs down",
    "fist": "making a fist hand gesture",
    "one": "holding up one finger",
    "peace": "making a peace sign with two fingers up",
    "peace_inverted": "making an inverted peace sign with two fingers down",
    "rock": "making a rock and roll hand gesture with index and little fingers up",
    "stop": "holding up {his} palm in a stop hand gesture",
    "stop_inverted": "holding {his} palm down in an inverted stop hand gesture",
    "three": "making three fingers up hand gesture",
    "three2": "making three fingers up hand gesture with thumb, index and middle fingers",
    "three3": "making three fingers up hand gesture with thumb and two fingers",
    "two_up": "making two fingers up hand gesture",
    "two_up_inverted": "making two fingers down hand gesture",
    "grabbing": "making a grabbing hand gesture with curved fingers",
    "grip": "making a gripping hand gesture",
    "hand_heart": "making a heart shape with {his} hands",
    "hand_heart2": "making a heart shape with {his} fingers",
    "holy": "holding {his} palms together in a prayer hand gesture",
    "pinkie": "holding up {his} little finger",
    "middle_finger": "holding up {his} middle finger",
    "point": "pointing with {his} index finger",
    "take_photo": "making a photo frame hand gesture with both hands",
    "three_gun": "making a finger gun hand gesture with three fingers",
    "thumb_index": "making an L shape with thumb and index finger",
    "thumb_index2": "making an L shape with thumb and index finger of both hands",
    "timeout": "making a timeout T sign with {his} hands",
    "xsign": "crossing {his} arms in an X sign",
}


def check_gesture(name: str) -> str:
    """Return `name` if HaGRID knows it, else raise an error that lists the valid names."""
    if name not in PHRASE_TEMPLATES:
        raise HandsynthError(
            f"unknown gesture '{name}'; valid gestures are: {', '.join(sorted(PHRASE_TEMPLATES))}"
        )
    return name


def gesture_phrase(gesture: str, pronoun: str = "his") -> str:
    """The phrase for `gesture`, with his/her/their filled in."""
    return PHRASE_TEMPLATES[check_gesture(gesture)].format(his=pronoun)
