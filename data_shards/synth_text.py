"""Writes LLM-style captions for synthetic tiles from what the drawer put in the picture.

UrbanCLIP's captions were written by an LLM (LLaMA-Adapter V2) looking at each tile: 1-7 sentences (about 4.5),
about 80 words joined, so most exceed CLIP's 77-token context; they open with "The image is a bird's eye view of
...", name the dominant land use with varied words, add roads, water, vegetation and building density, and
contain noise: irrelevant remarks (parked cars, a traffic light, a clear sky) and hallucinated details. This
module reproduces that style with a small template grammar: `{slot}` placeholders expand recursively to a
random alternative, so sentence structures and vocabulary vary while staying tied to the tile's `Scene`.

Like the real file, every sentence but the last of a tile has no final full stop (the toolkit split the LLM
output on ". ").
"""

from __future__ import annotations

import re

import numpy as np

from data_shards.synth_draw import LAND_USES, Scene

SENTENCE_COUNTS = (1, 2, 3, 4, 5, 6, 7)
SENTENCE_PROBS = (0.01, 0.03, 0.07, 0.38, 0.39, 0.10, 0.02)  # mean about 4.5, like the real captions
NOISE_SHARE = 0.35          # captions with an irrelevant remark
HALLUCINATION_SHARE = 0.12  # captions with a detail that is not in the picture

# Words per land use: noun phrases for the whole area and plural things seen in it.
AREA_WORDS = {
    "residential": ["residential area", "residential neighborhood", "housing estate", "residential community",
                    "housing development", "apartment complex"],
    "village": ["village", "rural settlement", "cluster of houses", "suburban neighborhood", "small town"],
    "commercial": ["commercial district", "business district", "downtown area", "city center",
                   "shopping area", "commercial zone"],
    "industrial": ["industrial zone", "industrial park", "factory complex", "manufacturing area",
                   "industrial facility", "logistics yard"],
    "green": ["park", "green space", "wooded area", "forest", "nature reserve", "area of lush vegetation"],
    "water": ["lake", "body of water", "reservoir", "river", "waterway"],
    "farmland": ["farmland", "agricultural area", "stretch of crop fields", "rural area with cultivated fields",
                 "patchwork of farm plots"],
    "bare": ["open field", "undeveloped area", "empty lot", "construction site", "stretch of barren land",
             "dirt field"],
}
THINGS = {
    "residential": ["apartment buildings", "residential buildings", "apartment blocks", "high-rise homes",
                    "housing blocks"],
    "village": ["houses", "homes", "small houses", "low-rise buildings", "single-family homes"],
    "commercial": ["office towers", "commercial buildings", "tall buildings", "shopping malls",
                   "skyscrapers", "office buildings"],
    "industrial": ["warehouses", "factories", "industrial buildings", "large sheds", "factory buildings"],
    "green": ["trees", "patches of greenery", "lush vegetation", "tree canopies", "green spaces"],
    "water": ["water", "ponds", "waterways"],
    "farmland": ["crop fields", "farm plots", "agricultural fields", "rows of crops", "cultivated fields"],
    "bare": ["patches of bare soil", "dirt areas", "empty lots", "piles of earth", "unpaved areas"],
}
SUMMARY = {
    "residential": ["a bustling, densely populated urban neighborhood", "a well-planned residential community",
                    "a lively place where many people live"],
    "village": ["a quiet, rural community", "a peaceful village on the outskirts of the city",
                "a small settlement with a relaxed atmosphere"],
    "commercial": ["a thriving metropolis", "a busy urban center full of activity",
                   "a vibrant commercial hub of the city"],
    "industrial": ["an industrial or commercial zone", "a busy industrial area with heavy activity",
                   "an important manufacturing hub"],
    "green": ["a serene and peaceful natural environment", "a green oasis within the city",
              "a tranquil place for recreation"],
    "water": ["a serene and picturesque waterfront", "a calm landscape shaped by water",
              "a scenic area with plenty of water"],
    "farmland": ["an agricultural landscape on the edge of the city", "a rural area devoted to farming",
                 "a peaceful countryside scene"],
    "bare": ["an area awaiting development", "a transitional zone between city and countryside",
             "a largely undeveloped landscape"],
}

GRAMMAR: dict[str, list[str]] = {
    "view": ["a bird's eye view", "an aerial view", "a satellite view", "an overhead view", "a top-down view"],
    "opener": ["The image is {view} of {a_area}, featuring {many} {things} and {minor}",
               "The image depicts {a_size} {area} with {many} {things} and {minor}",
               "The image shows {view} of {a_size} {area}, with {things} and {minor} spread across the scene",
               "This satellite image captures {a_area}, where {things} dominate the landscape and {minor} fill "
               "the gaps",
               "In this {view_noun}, {a_area} occupies most of the frame, surrounded by {minor}"],
    "view_noun": ["aerial photograph", "satellite image", "overhead image", "bird's eye view"],
    "size": ["large", "vast", "sprawling", "small", "expansive", "compact", "busy", "well-organized",
             "typical", "modern", "older"],
    "many": ["numerous", "many", "several", "a variety of", "a large number of", "a mix of", "countless",
             "plenty of", "dozens of", "an array of"],
    "where": ["in the upper part of the image", "in the lower left corner", "near the center of the image",
              "on the right side of the scene", "along the edge of the area", "in the background",
              "towards the bottom of the image", "nearby", "at the top of the frame",
              "in the upper right corner", "on the left side", "in the middle of the scene", "close to the road",
              "further away", "at the edge of the image"],
    "buildings": ["The {things} are {packing}, {height}, and they are arranged along the streets",
                  "There are {many} {things} in the area, {packing} and {height_short}",
                  "Rows of {things} line the streets, {packing}, which suggests {crowd}",
                  "The {things} appear {packing}, giving the area {a_feel} feel"],
    "secondary": ["In addition to the {things}, there is {a_sec} {where}, which adds variety to the area",
                  "The area also includes {a_sec}, which breaks up the landscape and adds a different character "
                  "to this part of the city",
                  "{a_sec} can be seen {where}, next to the {things}",
                  "Part of the image is taken up by {a_sec}, located {where} and separated from the rest by a road"],
    "roads": ["A {wide} {road} runs {direction} across the image, connecting different parts of the area",
              "A {wide} {road} cuts {direction} through the scene, with vehicles traveling along it",
              "The area is divided by a {wide} {road} that stretches {direction} across the image"],
    "crossing": ["Two major roads intersect {where}, forming a busy junction with several lanes",
                 "The image features a large intersection where two {wide} roads meet"],
    "streets": ["A {grid} of {small} streets {cross} the area, dividing it into {block} blocks",
                "The streets are laid out in a {grid}, creating {block} blocks between the buildings",
                "{small} roads {cross} the scene, connecting the different blocks of the area"],
    "wide": ["wide", "major", "busy", "long", "multi-lane", "straight", "prominent", "heavily used"],
    "road": ["road", "highway", "boulevard", "avenue", "expressway", "thoroughfare", "arterial road"],
    "grid": ["grid", "network", "regular pattern", "web", "checkerboard", "dense mesh"],
    "small": ["narrow", "small", "local", "winding", "quiet", "paved", "secondary", "residential"],
    "cross": ["crisscross", "run through", "wind through", "traverse", "cut across", "stretch across"],
    "river": ["A river {flows} through the area, adding a natural element to the landscape",
              "A {water_adj} river {flows} across the image, with its banks lined by vegetation and small paths",
              "The scene is crossed by a river that {flows} past the buildings"],
    "flows": ["flows", "winds", "runs", "meanders", "snakes", "curves"],
    "water_adj": ["calm", "wide", "dark", "narrow", "gently curving", "still", "murky", "tranquil"],
    "lake": ["There is a {water_adj} {pond_word} located {where}, providing a peaceful spot in the area",
             "A {pond_word} can be seen {where}, its dark water contrasting with the surroundings",
             "The {pond_word} {where} adds a touch of tranquility to the scene"],
    "vegetation": ["{trees} are scattered throughout the area, adding a touch of nature to the environment",
                   "There are {many} {trees} and green spaces, providing shade and a pleasant atmosphere",
                   "A significant portion of the image is covered by {trees}, which creates a lush landscape"],
    "trees": ["trees", "patches of greenery", "tall trees", "bushes and shrubs", "green trees", "lawns",
              "tree-lined paths", "grassy areas", "small gardens", "clusters of trees"],
    "tanks": ["Several large, white storage tanks can be seen {where}, {suggesting} {a_plant}",
              "A group of round {tank_word} stands {where}, which is typical of {a_plant}"],
    "tank_word": ["storage tanks", "silos", "cylindrical containers", "oil tanks"],
    "industry": ["Some of the buildings appear to be warehouses or factories, with large flat roofs",
                 "Large blue and grey roofs are visible {where}, {suggesting} {a_plant}"],
    "suggesting": ["suggesting", "indicating", "which suggests", "hinting at"],
    "a_plant": ["an industrial facility", "a fuel depot or chemical plant", "a storage and logistics site",
                "a manufacturing plant"],
    "noise": ["There are several cars parked along the streets, and a few trucks can be seen as well",
              "The sky is clear, suggesting that the image was taken on a sunny day",
              "There is a traffic light at one of the intersections, regulating the flow of vehicles",
              "A few people can be seen walking around the area, enjoying the outdoors",
              "A bus is visible on one of the roads, indicating public transportation in the area",
              "The image was likely taken during the daytime, as the area is well lit",
              "Several cars and trucks are moving along the roads, indicating a busy transportation network",
              "A few bicycles and pedestrians can be spotted on the sidewalks near the intersection",
              "The weather appears to be pleasant, with soft sunlight illuminating the whole scene",
              "Some construction cranes can be seen, suggesting ongoing development projects",
              "There is a parking lot filled with vehicles of different colors and sizes",
              "Street lamps and traffic signs are placed along the main roads for safety",
              "A delivery truck is parked in front of one of the buildings, unloading goods"],
    "hallucination": ["A small lake is visible in the corner of the image, surrounded by trees",
                      "A train track runs along the edge of the area, connecting it to the rest of the city",
                      "The surrounding area is covered in snow, giving the scene a wintery atmosphere",
                      "A large stadium can be seen in the distance, suggesting a sports venue nearby",
                      "A golf course is located nearby, adding to the recreational options in the area",
                      "The area is situated on a hillside, with mountains rising in the background",
                      "A school with a running track and a soccer field occupies one of the blocks",
                      "A bridge spans a wide river in the northern part of the area",
                      "A busy train station can be seen, with several trains waiting on the platforms"],
    "closing": ["The overall scene {gives} {summary}, with {things} and {minor} {coexist}",
                "Overall, the image {captures} {summary}, {where_people}",
                "This {view_noun} {captures} {summary}, showing how {things} and {minor} {coexist}",
                "The combination of {things} and {minor} {gives} {summary}"],
    "coexist": ["sharing the same space", "blending into one another", "coexisting side by side",
                "forming a varied landscape"],
    "where_people": ["where people live, work and move around every day",
                     "reflecting the way the land is used in this part of the city",
                     "and it offers a glimpse into the daily life of the area"],
    "gives": ["gives a sense of", "suggests", "gives off a sense of", "portrays"],
    "captures": ["captures the essence of", "showcases", "highlights", "presents"],
}


def caption(scene: Scene, density: float, rng: np.random.Generator) -> list[str]:
    """Caption sentences for one tile: the first names the dominant land use; the last ends with a full stop."""
    n = int(rng.choice(SENTENCE_COUNTS, p=SENTENCE_PROBS))
    slots = _scene_slots(scene, density, rng)
    body = _topics(scene, rng)
    rng.shuffle(body)
    if rng.random() < NOISE_SHARE:
        body.insert(int(rng.integers(0, len(body) + 1)), "noise")
    if rng.random() < HALLUCINATION_SHARE:
        body.insert(int(rng.integers(0, len(body) + 1)), "hallucination")
    body = (body + ["noise", "streets", "noise"])[: max(0, n - 2)]
    keys = ["opener"] + body + (["closing"] if n > 1 else [])
    sentences = [_expand(rng, "{" + k + "}", slots) for k in keys]
    sentences = [s[0].upper() + s[1:] for s in sentences]
    return sentences[:-1] + [sentences[-1] + "."]


def dominant_word(scene: Scene) -> str:
    """The land use the picture shows most (villages are residential land drawn as low-rise houses)."""
    dom = max(LAND_USES, key=lambda k: scene.area[k])
    return "village" if dom == "residential" and scene.village else dom


# ----------------------------------------------------------------------------- slots and topics

def _scene_slots(scene: Scene, density: float, rng: np.random.Generator) -> dict[str, list[str]]:
    dom = dominant_word(scene)
    ranked = sorted(LAND_USES, key=lambda k: -scene.area[k])
    sec = str(rng.choice([k for k in ranked[1:] if scene.area[k] > 0.15] or ranked[1:2]))
    dense = density > 0.55
    if rng.random() < 0.08:
        dense = not dense  # an LLM's wrong detail
    return {
        "area": AREA_WORDS[dom], "things": THINGS[dom], "summary": SUMMARY[dom],
        "a_area": ["{a_size} " + w for w in AREA_WORDS[dom]],
        "a_size": [_article(s) + " " + s for s in GRAMMAR["size"]],
        "a_sec": [_article(w) + " " + w for w in AREA_WORDS[sec]],
        "minor": THINGS[sec] + ["open spaces", "a network of roads"],
        "packing": (["densely packed", "closely spaced", "tightly arranged in rows"] if dense
                    else ["spread out", "scattered across the area", "sparsely distributed"]),
        "height": (["with many of them rising several stories high and casting long shadows",
                    "most of them tall structures that cast long shadows on the ground"] if scene.tall
                   else ["most of them low-rise structures with small footprints",
                         "with only a few buildings standing taller than the rest"]),
        "height_short": ["tall", "multi-story"] if scene.tall else ["low-rise", "fairly small"],
        "crowd": ["a large population", "a busy neighborhood"] if dense else ["a quiet area", "few residents"],
        "a_feel": ["a crowded", "an urban", "a busy"] if dense else ["an open", "a relaxed", "a spacious"],
        "block": ["small", "compact"] if scene.street_spacing < 60 else ["large", "wide"],
        "direction": {"horizontal": ["horizontally", "from left to right"], "vertical": ["vertically",
                      "from top to bottom"], "diagonal": ["diagonally"]}.get(scene.main_road or "", ["across"]),
        "pond_word": ["lake", "pond"] if scene.water == "lake" else ["pond", "pool of water"],
    }


def _topics(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Body sentence kinds supported by the picture."""
    out = []
    if scene.buildings > 5:
        out.append("buildings")
    out.append("secondary")
    out.append({None: "streets", "crossing": "crossing"}.get(scene.main_road, "roads"))
    if scene.water:
        out.append("river" if scene.water == "river" else "lake")
    if scene.area["green"] > 0.08:
        out.append("vegetation")
    if scene.tanks:
        out.append("tanks")
    if scene.area["industrial"] > 0.15:
        out.append("industry")
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_SLOT = re.compile(r"\{(\w+)\}")


def _expand(rng: np.random.Generator, text: str, slots: dict[str, list[str]]) -> str:
    """Replace each `{slot}` by a random alternative (scene slots first, then GRAMMAR), recursively."""
    def pick(m: re.Match) -> str:
        options = slots.get(m.group(1)) or GRAMMAR[m.group(1)]
        return _expand(rng, options[int(rng.integers(len(options)))], slots)
    return _SLOT.sub(pick, text)
