"""Prompt, visual and scoring functions of the smoke task (lmms-eval imports this file by path)."""

import os
import re


def doc_to_visual(doc):
    return [os.path.abspath(doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", doc["options"], strict=False))
    return (
        "Select the best answer to the following multiple-choice question based on the video.\n"
        f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."
    )


def process_results(doc, results):
    match = re.search(r"[ABCD]", results[0])
    return {"accuracy": float(match is not None and match.group(0) == doc["answer"])}
