"""One model's (or one stack's) training steps, with no tracking store in sight.

- environment.py: the device, threads, convolution backend and what identifies the code.
- recipe_data.py: the data one recipe trains on (split, cap, normalised once on the device).
- loop.py: optimizer, schedule, epochs and evaluation as plain functions.
- together.py: a recipe's seeds trained together as one vmapped model.
"""
