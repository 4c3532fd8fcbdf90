"""Regenerate recipes/data/tiny-sentiment.csv: a small, learnable 3-class sentiment set for tests.

Sentences are built from templates with words whose polarity decides the label, plus neutral filler,
so a tiny model learns it in seconds and a distilled student can be compared against its teacher.
Run: python recipes/data/make_tiny_sentiment.py > recipes/data/tiny-sentiment.csv
"""

import csv
import random
import sys

POSITIVE = ["great", "excellent", "lovely", "wonderful", "happy", "fantastic", "good", "amazing"]
NEGATIVE = ["awful", "terrible", "horrible", "sad", "bad", "broken", "angry", "useless"]
NEUTRAL = ["okay", "normal", "average", "plain", "usual", "fine", "standard", "ordinary"]
SUBJECTS = ["the car", "my phone", "this movie", "the service", "our trip", "the food", "that song", "the app"]
TEMPLATES = ["{s} was {w}", "i think {s} is {w}", "{s} looked {w} today", "honestly {s} felt {w}",
             "everyone said {s} is {w}", "{s} is {w} and {w2}"]


def rows(count: int, seed: int = 0):
    rng = random.Random(seed)
    pools = {"negative": NEGATIVE, "neutral": NEUTRAL, "positive": POSITIVE}
    for index in range(count):
        label = ["negative", "neutral", "positive"][index % 3]
        words = pools[label]
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=rng.choice(words), w2=rng.choice(words))
        yield {"text": text, "label": label}


if __name__ == "__main__":
    writer = csv.DictWriter(sys.stdout, fieldnames=["text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 360))
