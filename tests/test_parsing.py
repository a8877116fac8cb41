"""Reply parsing: realistic query-turn and answer-turn replies, each with the result it must give."""

import pytest

from msjoe.mllm.parsing import (
    MAX_QUERY_WORDS,
    AnswerParse,
    answer_follows_format,
    parse_answer,
    parse_queries,
    queries_follow_format,
)

# --- queries -------------------------------------------------------------------------------------------------
RED_DOG = ["a red car", "a dog on a beach"]

QUERY_REPLIES = [
    # the strict format and small deviations around it
    ('<queries>["a red car", "a dog on a beach"]</queries>', RED_DOG),
    ('<queries>\n["a red car",\n "a dog on a beach"]\n</queries>', RED_DOG),
    ('<QUERIES>["a red car", "a dog on a beach"]</QUERIES>', RED_DOG),
    ('Sure.\n<queries>["a red car", "a dog on a beach"]</queries>\nHope this helps!', RED_DOG),
    ('<queries>["a red car", "a dog on a beach",]</queries>', RED_DOG),  # trailing comma
    ("<queries>['a red car', 'a dog on a beach']</queries>", RED_DOG),  # Python quotes
    ("<queries>[“a red car”, “a dog on a beach”]</queries>", RED_DOG),  # typographic quotes
    ('<queries>["a red car", "a dog on a beach"]', RED_DOG),  # closing tag missing
    ('<queries>["a red car", "a dog on a beach"', RED_DOG),  # cut off after the last string
    ('<queries>["a red car", "a dog on a be', ["a red car"]),  # cut inside a string: that one is lost
    ("<queries>\na red car\na dog on a beach\n</queries>", RED_DOG),  # one per line inside tags
    ("<queries>\n1. a red car\n2. a dog on a beach\n</queries>", RED_DOG),
    ('<queries>"a red car"</queries>', ["a red car"]),
    # the last tag pair is the answer; an earlier one may be the format echoed while reasoning
    ('I must reply like <queries>["..."]</queries>.\n<queries>["a red car"]</queries>', ["a red car"]),
    ('<think>Maybe <queries>["wrong"]</queries>?</think><queries>["a red car"]</queries>', ["a red car"]),
    # JSON without tags
    ('["a red car", "a dog on a beach"]', RED_DOG),
    ('Here are the queries:\n```json\n["a red car", "a dog on a beach"]\n```', RED_DOG),
    ('```\n["a red car", "a dog on a beach"]\n```', RED_DOG),
    ('{"queries": ["a red car", "a dog on a beach"]}', RED_DOG),
    ('```json\n{"Queries": ["a red car", "a dog on a beach"], "reason": "x"}\n```', RED_DOG),
    ('{"queries": [{"query": "a red car"}, {"query": "a dog on a beach"}]}', RED_DOG),
    ("Queries: ['a red car', 'a dog on a beach']", RED_DOG),
    # numbered and bulleted lists, chatter dropped
    ("1. a red car\n2. a dog on a beach", RED_DOG),
    ("1) a red car\n2) a dog on a beach", RED_DOG),
    ("(1) a red car\n(2) a dog on a beach", RED_DOG),
    ("- a red car\n- a dog on a beach", RED_DOG),
    ("* a red car\n* a dog on a beach", RED_DOG),
    ("• a red car\n• a dog on a beach", RED_DOG),
    ("Query 1: a red car\nQuery 2: a dog on a beach", RED_DOG),
    ("Query #1: a red car\nQuery #2: a dog on a beach", RED_DOG),
    ("**Query 1:** a red car\n**Query 2:** a dog on a beach", RED_DOG),
    ("Q1: a red car\nQ2: a dog on a beach", RED_DOG),
    ("Here are the queries:\n1. a red car\n2. a dog on a beach\nThese should help locate the frames.", RED_DOG),
    ('Sure! Here are four descriptions:\n- "a red car"\n- "a dog on a beach"', RED_DOG),
    ("1. A red car.\n2. A dog on a beach.", ["A red car", "A dog on a beach"]),
    # one per line
    ("a red car\na dog on a beach", RED_DOG),
    ("Here are the queries:\na red car\na dog on a beach", RED_DOG),
    ('"a red car",\n"a dog on a beach"', RED_DOG),
    ("a red car", ["a red car"]),
    # cleaning: duplicates (case-insensitive), empty items, inner quotes and punctuation kept
    ('<queries>["a red car", "A Red Car", "a red car."]</queries>', ["a red car"]),
    ('<queries>["", "  ", "a red car"]</queries>', ["a red car"]),
    (
        '<queries>["a sign reading \\"EXIT\\"", "a man, 30, in a hat"]</queries>',
        ['a sign reading "EXIT"', "a man, 30, in a hat"],
    ),
    ('<queries>["a   red\\n car"]</queries>', ["a red car"]),
    # truncation to max_queries, order kept
    ('<queries>["q one", "q two", "q three", "q four", "q five"]</queries>', ["q one", "q two", "q three", "q four"]),
    # prose is not a query
    (" ".join(["word"] * (MAX_QUERY_WORDS + 1)), []),
    ("- a red car\n- " + " ".join(["word"] * (MAX_QUERY_WORDS + 1)), ["a red car"]),
    # nothing to parse
    ("", []),
    ("   \n  ", []),
    ("[]", []),
    ("<queries></queries>", []),
    ("<queries>[]</queries>", []),
    ("Here are the queries:", []),
    ("```json\n```", []),
    ("- \n- ...", []),
]


@pytest.mark.parametrize(("reply", "expected"), QUERY_REPLIES)
def test_parse_queries(reply, expected):
    assert parse_queries(reply) == expected


def test_parse_queries_max_queries():
    reply = "1. q one\n2. q two\n3. q three"
    assert parse_queries(reply, max_queries=2) == ["q one", "q two"]
    assert parse_queries(reply, max_queries=1) == ["q one"]
    assert parse_queries(reply, max_queries=10) == ["q one", "q two", "q three"]
    with pytest.raises(ValueError, match="max_queries must be at least 1"):
        parse_queries(reply, max_queries=0)


@pytest.mark.parametrize(
    ("reply", "strict"),
    [
        ('<queries>["a red car", "a dog on a beach"]</queries>', True),
        ('  <queries>\n["a red car"]\n</queries>\n', True),
        ('<queries>["q1", "q2", "q3", "q4"]</queries>', True),
        ('<queries>["q1", "q2", "q3", "q4", "q5"]</queries>', False),  # too many
        ("<queries>[]</queries>", False),
        ('<queries>["a red car", "A red car"]</queries>', False),  # duplicate
        ('<queries>["a red car", ""]</queries>', False),
        ('<queries>["1. a red car"]</queries>', False),  # numbering inside the strings
        ('<queries>["a red car."]</queries>', False),
        ('<queries>["a red car", 3]</queries>', False),
        ("<queries>['a red car']</queries>", False),  # not JSON
        ('<queries>{"queries": ["a red car"]}</queries>', False),
        ('["a red car"]', False),  # tags missing
        ('Sure: <queries>["a red car"]</queries>', False),  # chatter around
        ("<queries>\na red car\n</queries>", False),
        ("<queries>[" + '"' + " ".join(["w"] * (MAX_QUERY_WORDS + 1)) + '"]</queries>', False),
        ("", False),
    ],
)
def test_queries_follow_format(reply, strict):
    assert queries_follow_format(reply) is strict


def test_queries_follow_format_max_queries():
    reply = '<queries>["q1", "q2", "q3"]</queries>'
    assert queries_follow_format(reply, max_queries=3)
    assert not queries_follow_format(reply, max_queries=2)


# --- answers -------------------------------------------------------------------------------------------------
OPTIONS = ["a dog", "a red car", "a man is walking", "the sky"]


def ok(letter: str) -> tuple[str | None, str]:
    return (letter, "ok")


AMBIGUOUS = (None, "ambiguous")
UNPARSED = (None, "unparsed")

ANSWER_REPLIES = [
    # the reply is the letter
    ("B", ok("B")),
    ("B.", ok("B")),
    ("  B \n", ok("B")),
    ("(B)", ok("B")),
    ("[B]", ok("B")),
    ("b", ok("B")),
    ("(b)", ok("B")),
    ('"B"', ok("B")),
    ("**B**", ok("B")),
    ("`B`", ok("B")),
    ("Option C", ok("C")),
    ("option c", ok("C")),
    ("Choice: D", ok("D")),
    ("A", ok("A")),
    ("A.", ok("A")),
    ("a", ok("A")),
    ("<answer>B</answer>", ok("B")),
    ("<answer> (C) </answer>", ok("C")),
    ('{"answer": "B"}', ok("B")),
    ('```json\n{"answer": "C", "reason": "the car is red"}\n```', ok("C")),
    ('{"Answer": "(D) the sky"}', ok("D")),
    ("<think>A shows a dog. B? Hmm.</think>D", ok("D")),
    ("<think>\nThe dog is in A.\n</think>\n\n<answer>A</answer>", ok("A")),
    # a leading labelled letter
    ("B) a red car", ok("B")),
    ("B. A red car drives by.", ok("B")),
    ("(B) a red car", ok("B")),
    ("B: a red car", ok("B")),
    ("B - a red car", ok("B")),
    ("B, because the car is red.", ok("B")),
    ("B\nExplanation: the car appears at 01:05.", ok("B")),
    ("b) a red car", ok("B")),
    ("A. A dog runs across the field.", ok("A")),
    # explicit statements
    ("Answer: B", ok("B")),
    ("answer: b", ok("B")),
    ("Answer: (C)", ok("C")),
    ("Answer:\n\n**C**", ok("C")),
    ("**Answer:** D", ok("D")),
    ("### Answer\nD", ok("D")),
    ("Final answer: D", ok("D")),
    ("The answer is B.", ok("B")),
    ("The answer is (B).", ok("B")),
    ("The answer is option B.", ok("B")),
    ("The answer is: B", ok("B")),
    ("The answer is **B**.", ok("B")),
    ("The answer to the question is C.", ok("C")),
    ("The answer is likely C.", ok("C")),
    ("The answer would be C.", ok("C")),
    ("The correct answer is C: a man is walking.", ok("C")),
    ("The correct option is B: the red car", ok("B")),
    ("The best choice is (D).", ok("D")),
    ("I choose C.", ok("C")),
    ("I would go with B.", ok("B")),
    ("I'd pick D", ok("D")),
    ("I think the answer is C because the man walks at 02:10.", ok("C")),
    ("The answer is A because the dog appears in every frame.", ok("A")),
    ("Option B is correct.", ok("B")),
    ("B is the correct answer.", ok("B")),
    ("(C) is the best choice here.", ok("C")),
    ("A, B and C are wrong; D is correct.", ok("D")),
    # the final explicit statement wins over earlier reasoning
    ("Frame 3 shows a dog, so A looks plausible, but B shows the car.\nAnswer: D", ok("D")),
    ("A could fit, and so could B. After checking again, the answer is C.", ok("C")),
    ("The answer is A. Wait, looking again at 01:05, the answer is B.", ok("B")),
    ("Options: A. a dog B. a red car C. a man D. the sky. The answer is B.", ok("B")),
    ("A. a dog\nB. a red car\nC. a man is walking\nD. the sky\nAnswer: C", ok("C")),
    ("Option A doesn't match the frames. Therefore, B.", ok("B")),
    ("(A) is not shown at all. So (C)!", ok("C")),
    ("So A man walks in; B is the match.", ok("B")),
    ("Answer: I think it is B.", ok("B")),  # "So A man" is prose, not a conclusion
    # an explicit statement naming an option's text
    ("The answer is a dog.", ok("A")),
    ("Answer: the sky", ok("D")),
    ("The answer is A man is walking.", ok("C")),  # the article "A", and C's text
    # letters mentioned once
    ("B because the car is red.", ok("B")),
    ("It must be B.", ok("B")),
    ("The frames at 01:05 show a red car, which matches option b.", ok("B")),
    ("I believe (C).", ok("C")),
    ("The answer is not A, it is B.", ok("B")),
    ("Not A; B.", ok("B")),
    ("A is incorrect, B is wrong, so C.", ok("C")),
    ("Rather than A, I pick... well, I think C.", ok("C")),
    # the option's text instead of a letter
    ("a red car", ok("B")),
    ("A red car.", ok("B")),
    ("The sky", ok("D")),
    ("A man is walking.", ok("C")),
    ("The video shows a red car parked outside.", ok("B")),
    # ambiguous: never guess
    ("A or B", AMBIGUOUS),
    ("The answer is A or B.", AMBIGUOUS),
    ("The answer is (A) or (B).", AMBIGUOUS),
    ("Answer: B/C", AMBIGUOUS),
    ("It is either (A) or (C).", AMBIGUOUS),
    ("(A) or (C)", AMBIGUOUS),  # a leading letter offered with an alternative
    ("B. or D, hard to say", AMBIGUOUS),
    ("(C) / A", AMBIGUOUS),
    ("Option A shows a dog and option B a car.", AMBIGUOUS),
    ("A. a dog\nB. a red car\nC. a man is walking\nD. the sky", AMBIGUOUS),
    ("The answer is a red car or the sky.", AMBIGUOUS),  # no letter, two option texts
    ("I see a dog and a red car.", AMBIGUOUS),
    # nothing (or nothing valid) to parse
    ("", UNPARSED),
    ("   ", UNPARSED),
    ("<answer></answer>", UNPARSED),
    ("A man walks into the room.", UNPARSED),  # the article, and no option says this
    ("A dogsled crosses the ice.", UNPARSED),
    ("I cannot determine the answer from these frames.", UNPARSED),
    ("I can't tell.", UNPARSED),
    ("None of the options match a dog.", UNPARSED),
    ("There is not enough information to answer.", UNPARSED),
    ("I, too, find this hard.", UNPARSED),
    ("E", UNPARSED),
    ("(E)", UNPARSED),
    ("The answer is E.", UNPARSED),
    ("E) none of the above", UNPARSED),
    ("Answer: Z", UNPARSED),
    ("The answer is B. No wait, the answer is F.", UNPARSED),  # the final statement is out of range
    ("Hmm.", UNPARSED),
    ("The answer is unclear.", UNPARSED),
    ("To answer this, I look at the frames.", UNPARSED),
]


@pytest.mark.parametrize(("reply", "expected"), ANSWER_REPLIES)
def test_parse_answer(reply, expected):
    result = parse_answer(reply, OPTIONS)
    assert (result.letter, result.status) == expected, result.reason
    assert result.ok == (expected[1] == "ok")


def test_parse_answer_reports_candidates_and_reasons():
    ambiguous = parse_answer("It is either (A) or (C).", OPTIONS)
    assert ambiguous.candidates == ("A", "C")
    out_of_range = parse_answer("E", OPTIONS)
    assert "'E' is not one of A-D" in out_of_range.reason
    assert parse_answer("a red car", OPTIONS).reason == "the reply repeats one option's text"
    with pytest.raises(AttributeError):
        ambiguous.letter = "A"  # frozen
    assert isinstance(ambiguous, AnswerParse)


@pytest.mark.parametrize(
    ("reply", "options", "expected"),
    [
        # the number of options sets the range
        ("C", ["x", "y"], UNPARSED),
        ("B", ["x", "y"], ok("B")),
        ("Z", [f"option {i}" for i in range(26)], ok("Z")),
        # "I" is a letter only with at least 9 options, and then only in letter form
        ("I", [f"opt {i}" for i in range(9)], ok("I")),
        ("(I)", [f"opt {i}" for i in range(9)], ok("I")),
        ("I think (C).", [f"opt {i}" for i in range(9)], ok("C")),
        ("I", ["x", "y"], UNPARSED),
        # labelled option texts are matched without their labels
        ("a red car", ["A. a dog", "B. a red car"], ok("B")),
        ("The answer is the red car.", ["(A) a dog", "(B) the red car"], ok("B")),
        # a text inside a longer option's text counts for the longer one
        ("a big red car", ["red car", "a big red car", "a dog"], ok("B")),
        ("the red car", ["red car", "a big red car", "a dog"], ok("A")),
        # identical option texts cannot be told apart
        ("a dog", ["a dog", "a dog", "a cat"], AMBIGUOUS),
        # yes/no questions
        ("Yes", ["Yes", "No"], ok("A")),
        ("No, the man does not return.", ["Yes", "No"], ok("B")),
        # numbers as options
        ("3", ["2", "3", "4", "5"], ok("B")),
        ("There are 3 people.", ["2", "3", "4", "5"], ok("B")),
        ("At 2 minutes there are 3 people.", ["2", "3", "4", "5"], AMBIGUOUS),
    ],
)
def test_parse_answer_depends_on_options(reply, options, expected):
    result = parse_answer(reply, options)
    assert (result.letter, result.status) == expected, result.reason


def test_parse_answer_rejects_bad_options():
    with pytest.raises(ValueError, match="free-form"):
        parse_answer("B", [])
    with pytest.raises(ValueError, match="between 0 and 26"):
        parse_answer("B", [f"o{i}" for i in range(27)])


@pytest.mark.parametrize(
    ("reply", "strict"),
    [
        ("B", True),
        ("B.", True),
        ("(B)", True),
        (" D \n", True),
        ("E", False),
        ("b", False),
        ("Answer: B", False),
        ("B) a red car", False),
        ("", False),
    ],
)
def test_answer_follows_format(reply, strict):
    assert answer_follows_format(reply, OPTIONS) is strict


@pytest.mark.parametrize("reply", ["[" * 5000, "{" * 5000, '{"queries": ' * 3000, "(" * 5000, "answer " * 2000])
def test_pathological_replies_do_not_raise(reply):
    assert parse_queries(reply) == []
    assert parse_answer(reply, OPTIONS).status == "unparsed"
