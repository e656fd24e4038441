"""A small English grammar that the demo model is trained and evaluated on.

The vocabulary is closed (about 330 words) so that a model of a few MB can learn
it from synthetic speech; the grammar is open enough that held-out sentences are
new word sequences, which is what the held-out WER measures.
"""

import random

NAMES = (
    "anna ben carla david emma frank grace henry iris jack laura mark nina oscar paul rachel sam tom "
    "victor wendy alice bob chloe daniel"
).split()
NOUNS = (
    "dog cat horse bird fish teacher doctor farmer pilot driver student child friend neighbour family "
    "book letter car train boat plane bike house garden kitchen window door table chair phone computer "
    "camera picture song story game ticket river mountain forest city village street market school office "
    "hospital station bridge park beach island road shop bank library museum restaurant hotel airport "
    "apple bread coffee water dinner breakfast lunch music money key box bag map"
).split()
ADJECTIVES = (
    "big small old new red blue green yellow black white happy sad quiet loud fast slow warm cold bright "
    "dark young busy empty heavy light clean strange famous"
).split()
VERBS_PAST = (
    "saw found bought sold opened closed painted cleaned carried watched found visited left moved fixed "
    "washed built followed called helped pushed pulled dropped lost wanted liked needed brought took gave "
    "showed sent"
).split()
VERBS_BASE = (
    "see find buy sell open close paint clean carry watch visit leave move fix wash build follow call "
    "help push pull drop lose want like need bring take give show send"
).split()
INTRANSITIVE_PAST = (
    "arrived waited smiled laughed slept worked jumped danced stopped started listened walked ran swam "
    "travelled returned"
).split()
PREPOSITIONS = (
    "in on near behind under above beside inside outside across through"
).split()
ADVERBS = (
    "quickly slowly quietly carefully suddenly finally always never often sometimes really almost"
).split()
TIMES = (
    "yesterday today tomorrow tonight morning evening afternoon monday tuesday wednesday thursday friday "
    "saturday sunday january march june september december"
).split()
NUMBERS = (
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty "
    "hundred"
).split()
COLORS_OF_TIME = (
    "early late"
).split()
PLACES_PHRASE = (
    "at home at work at night at noon at the end"
).split()
FUNCTION_WORDS = (
    "the a an and but because so then when while after before with without from to of for about into over "
    "he she they we you i it this that there is was are were will would can could should must has have "
    "had do did not very too also just only his her their our my your what where why how who which please "
    "thank yes no"
).split()


def _noun_phrase(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(NAMES)
    det = rng.choice(["the", "a", "my", "your", "his", "her", "our", "their", "this", "that"])
    noun = rng.choice(NOUNS)
    if det == "a" and noun[0] in "aeiou":
        det = "an"
    if rng.random() < 0.45:
        adj = rng.choice(ADJECTIVES)
        if det in ("a", "an"):
            det = "an" if adj[0] in "aeiou" else "a"
        return f"{det} {adj} {noun}"
    if rng.random() < 0.15:
        return f"{rng.choice(NUMBERS)} {noun}s" if not noun.endswith(("s", "sh", "ch", "x")) else f"the {noun}"
    return f"{det} {noun}"


def _place(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(PLACES_PHRASE)
    return f"{rng.choice(PREPOSITIONS)} the {rng.choice(NOUNS)}"


def _when(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(TIMES)
    if roll < 0.75:
        return f"at {rng.choice(NUMBERS[:12])}"
    return f"{rng.choice(['on', 'before', 'after'])} {rng.choice(TIMES[8:15])}"


def _clause(rng: random.Random) -> str:
    subject = rng.choice(["he", "she", "they", "we", "you", "i"]) if rng.random() < 0.3 else _noun_phrase(rng)
    kind = rng.random()
    if kind < 0.35:
        parts = [subject, rng.choice(VERBS_PAST), _noun_phrase(rng)]
    elif kind < 0.55:
        parts = [subject, rng.choice(INTRANSITIVE_PAST)]
        if rng.random() < 0.5:
            parts.append(rng.choice(ADVERBS))
    elif kind < 0.7:
        modal = rng.choice(["will", "can", "could", "should", "must", "would"])
        negation = ["not"] if rng.random() < 0.25 else []
        parts = [subject, modal, *negation, rng.choice(VERBS_BASE), _noun_phrase(rng)]
    elif kind < 0.85:
        be = rng.choice(["is", "was"]) if subject not in ("they", "we", "you") else rng.choice(["are", "were"])
        if subject == "i":
            be = "was"
        parts = [subject, be, rng.choice(["very", "too", "not", "really", "also"]), rng.choice(ADJECTIVES)]
    else:
        parts = [subject, rng.choice(["has", "had"]), rng.choice(NUMBERS), rng.choice(NOUNS) + "s"]
    if rng.random() < 0.45:
        parts.append(_place(rng))
    if rng.random() < 0.35:
        parts.append(_when(rng))
    return " ".join(parts)


def make_sentence(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        question = rng.choice(["what", "where", "why", "how", "who", "when"])
        return f"{question} {rng.choice(['did', 'will', 'can', 'should'])} {_noun_phrase(rng)} {rng.choice(VERBS_BASE)}"
    if roll < 0.12:
        return f"please {rng.choice(VERBS_BASE)} {_noun_phrase(rng)} {_place(rng)}"
    sentence = _clause(rng)
    if rng.random() < 0.3:
        joiner = rng.choice(["and", "but", "because", "so", "then", "when", "while", "after", "before"])
        sentence += f" {joiner} {_clause(rng)}"
    return sentence


def vocabulary() -> set[str]:
    words: set[str] = set()
    for group in (NAMES, NOUNS, ADJECTIVES, VERBS_PAST, VERBS_BASE, INTRANSITIVE_PAST, PREPOSITIONS,
                  ADVERBS, TIMES, NUMBERS, COLORS_OF_TIME, FUNCTION_WORDS):
        words.update(group)
    words.update(f"{noun}s" for noun in NOUNS)
    words.update(["at", "on", "before", "after"])
    return words


def make_corpus(count: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """Distinct sentences of 3 to 16 words, none of them in `exclude`."""
    rng = random.Random(seed)
    seen: set[str] = set(exclude)
    corpus = []
    while len(corpus) < count:
        sentence = make_sentence(rng)
        n_words = len(sentence.split())
        if sentence in seen or not 3 <= n_words <= 16:
            continue
        seen.add(sentence)
        corpus.append(sentence)
    return corpus


def make_short_phrases(count: int, seed: int) -> list[str]:
    """One to three vocabulary words: easy alignments that start the curriculum."""
    rng = random.Random(seed)
    words = sorted(vocabulary())
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(count)]
