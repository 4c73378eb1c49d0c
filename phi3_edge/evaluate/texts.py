"""Built-in evaluation prompts: a small fixed set of English prose and Python code.

Fixed text (never sampled, never downloaded) so that a KL number recorded in one manifest is comparable with
the number in another: same prompts, same tokenizer, same positions. Kept short (about 60-120 Phi-3 tokens
each) so that the accuracy gate of an export costs seconds on a laptop, and mixed in kind because int4 error
shows up differently on prose (many plausible next tokens) and code (few, sharp ones).
"""

from __future__ import annotations

PROMPTS: tuple[str, ...] = (
    # English: explanation, narrative, instructions, dialogue.
    "A key value cache stores the keys and values that attention computed for earlier tokens. When the model "
    "generates the next token, it only needs to compute attention for that one new position, reading the "
    "cached keys and values instead of recomputing them, which makes each decoding step much cheaper.",
    "The lighthouse keeper climbed the narrow stairs every evening at dusk. From the top he could see the "
    "fishing boats returning to the harbour, their lanterns swaying with the waves, and he would count them "
    "one by one until every boat that had left in the morning was safely home again.",
    "To replace a bicycle tyre, first release the brake and remove the wheel. Let the remaining air out of "
    "the tube, then use two tyre levers to lift one side of the tyre over the rim. Pull out the old tube, "
    "check the inside of the tyre for sharp objects, and fit the new tube before pushing the tyre back on.",
    "User: What is the capital of France, and why is it famous?\nAssistant: The capital of France is Paris. "
    "It is famous for its museums, such as the Louvre, for the Eiffel Tower, for its cafes and food, and "
    "for its long history as a centre of art, science and politics in Europe.",
    # Python: a function, a class, a loop with I/O, a small algorithm.
    "def fibonacci(n: int) -> list[int]:\n"
    "    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n"
    "    numbers = [0, 1]\n"
    "    while len(numbers) < n:\n"
    "        numbers.append(numbers[-1] + numbers[-2])\n"
    "    return numbers[:n]\n\n\n"
    "print(fibonacci(10))\n",
    "class Stack:\n"
    "    def __init__(self) -> None:\n"
    "        self._items: list[object] = []\n\n"
    "    def push(self, item: object) -> None:\n"
    "        self._items.append(item)\n\n"
    "    def pop(self) -> object:\n"
    "        if not self._items:\n"
    "            raise IndexError(\"pop from an empty stack\")\n"
    "        return self._items.pop()\n",
    "import json\nfrom pathlib import Path\n\n\n"
    "def load_settings(path: Path) -> dict:\n"
    "    with path.open(encoding=\"utf-8\") as handle:\n"
    "        settings = json.load(handle)\n"
    "    for key, value in settings.items():\n"
    "        print(f\"{key} = {value}\")\n"
    "    return settings\n",
    "def binary_search(items: list[int], target: int) -> int:\n"
    "    low, high = 0, len(items) - 1\n"
    "    while low <= high:\n"
    "        middle = (low + high) // 2\n"
    "        if items[middle] == target:\n"
    "            return middle\n"
    "        if items[middle] < target:\n"
    "            low = middle + 1\n"
    "        else:\n"
    "            high = middle - 1\n"
    "    return -1\n",
)
