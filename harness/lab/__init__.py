"""The real domain: the emulated bench, capture plans and the capture-set format.

    bench     EmulatedBench and its presets (a parameter generator of bench non-idealities)
    plans     the capture order, the mask to show, exported inputs, capturing through a bench
    captures  the capture-set format (constants, CaptureSet) and its writer
    frames    decoding frame files
    validate  reading and validating capture sets, pairing with an export's inputs.csv
    cli       ``simgap capture``, ``simgap export-mask``, ``simgap captures check``
"""
