"""Ravens-style language-conditioned tabletop pick-and-place in pybullet (CLIPort / ASkDAgger tasks).

Modules (only ``registry`` and ``geometry`` are light; the rest import pybullet):

* ``registry``  — gymnasium ids ``lit_imit/Ravens-<task>-v0`` for the ten tasks (imported by ``lit_imit.envs``);
* ``geometry``  — numpy-only conventions: workspace bounds, 3.125 mm pixels, 320x160 heightmaps, pixel <-> world,
  heightmap projection/fusion, poses, CLIPort's 6-channel input and action <-> pixel helpers;
* ``cameras``   — the three RealSense-like RGB-D views and their fusion into the top-down heightmap;
* ``assets``    — colours, the 20 procedural kitting shapes, bowls, boxes, and the named pybullet_data objects;
* ``sim``       — the pybullet world, the floating suction tool and the pick-and-place primitive;
* ``tasks``     — scene generation, goals and partial-credit reward, oracle, matches and relabeling;
* ``env``       — ``RavensEnv`` (gymnasium) with snapshot/restore and foresight, and ``RavensOracle`` (teacher);
* ``evaluate``  — oracle success / throughput sweeps (``python -m lit_imit.envs.ravens.evaluate``).
"""
