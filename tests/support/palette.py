"""The PASCAL VOC colour map, written out by hand: what the masks this package writes must
show (the README: index i is class i, drawn in the VOC colour of i)."""

# The PASCAL VOC colours (the VOC devkit's colour map, as its SegmentationClass PNGs hold
# them), written out here rather than taken from the code: class i's RGB, 255 = ignore.
VOC_COLOURS = {
    0: (0, 0, 0),  # background: black
    1: (128, 0, 0),  # aeroplane: dark red
    2: (0, 128, 0),  # bicycle: green
    3: (128, 128, 0),  # bird: olive
    4: (0, 0, 128),  # boat: navy
    5: (128, 0, 128),  # bottle: purple
    6: (0, 128, 128),  # bus: teal
    7: (128, 128, 128),  # car: grey
    8: (64, 0, 0),  # cat
    9: (192, 0, 0),  # chair
    10: (64, 128, 0),  # cow
    11: (192, 128, 0),  # dining table
    12: (64, 0, 128),  # dog
    13: (192, 0, 128),  # horse
    14: (64, 128, 128),  # motorbike
    15: (192, 128, 128),  # person
    16: (0, 64, 0),  # potted plant
    17: (128, 64, 0),  # sheep
    18: (0, 192, 0),  # sofa
    19: (128, 192, 0),  # train
    20: (0, 64, 128),  # tv/monitor
    255: (224, 224, 192),  # ignore (void): cream
}
