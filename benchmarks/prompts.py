"""The text every benchmark builds its prompts from.

Real prose, so attention and sampling see ordinary activations; each benchmark
puts a numbered header in front so prompts differ in their first KV block and
the prefix cache cannot serve one request from another.
"""

from __future__ import annotations

PARAGRAPH = (
    "The river leaves the mountains through a narrow gorge, then spreads across a wide "
    "plain where farmers have grown wheat and barley for more than a thousand years. "
    "Every spring the snowmelt raises the water, and the villages along the banks repair "
    "their dikes, clear the irrigation channels and trade news of the harvest to come. "
    "Travellers who cross the plain in summer remember the heat, the dust on the roads, "
    "the long lines of poplars and the evening markets where bread, cheese and apricots "
    "are sold by lamplight until well after dark. "
)
