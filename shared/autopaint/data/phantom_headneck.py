"""Head-and-neck phantom anatomy, painted on a :class:`~autopaint.data.phantom_common.Canvas`.

Patient frame (mm): x towards the patient's Right, y Anterior, z Superior; z = 0 at the caudal end
(lung apices, clavicles, shoulders), z = H at the cranial end (skull base, posterior fossa).
CT values in HU, activity in SUV (FDG, before PSF blur).
"""

from __future__ import annotations

import numpy as np

from autopaint.data.phantom_common import (
    SOFT_TISSUES,
    Canvas,
    Capsule,
    Ellipsoid,
    Extrusion,
    Field,
    FuncShape,
    T,
    cyl,
    paint_tube,
    paint_tumour,
    place_tumour,
    textured,
)

Arr = np.ndarray
NECK = (T.FAT, T.MUSCLE, T.SOFT, T.MEDFAT)


def _table(cv: Canvas, y_top: float, H: float) -> None:
    def inside(x: Arr, y: Arr, z: Arr, lo: float, hi: float) -> Arr:
        yt = y_top + 0.0012 * x * x
        return (y <= yt - lo) & (y >= yt - hi) & (np.abs(x) < 230) & (z > -1e9)

    box = (np.array([-230.0, y_top - 40, -10]), np.array([230.0, y_top + 70, H + 10]))
    cv.paint(FuncShape(*box, lambda x, y, z: inside(x, y, z, 2.0, 14.0)), T.TABLE, 250.0, 0.0)
    cv.paint(FuncShape(*box, lambda x, y, z: inside(x, y, z, 4.0, 12.0)), T.TABLE, -880.0, 0.0)


def _outline(rng: np.random.Generator, H: float, s: float) -> Extrusion:
    f = np.array([-0.03, 0.08, 0.16, 0.24, 0.4, 0.55, 0.63, 0.75, 0.9, 1.03])
    a = np.array([185, 165, 120, 72, 62, 64, 70, 74, 78, 80]) * s
    b_ant = np.array([95, 90, 75, 68, 62, 66, 92, 98, 102, 100]) * s
    b_post = np.array([105, 100, 85, 72, 68, 70, 74, 80, 86, 90]) * s
    j = rng.uniform(0.94, 1.06, size=3)
    harm = tuple((m, float(rng.uniform(0.005, 0.02)), float(rng.uniform(0, 2 * np.pi))) for m in range(2, 5))
    return Extrusion(f * H, np.zeros(10), np.zeros(10), a * j[0], a * j[0], b_ant * j[1], b_post * j[2],
                     p=2.3, harm=harm)


def _spine(cv: Canvas, rng: np.random.Generator, yv: float, s: float, H: float) -> None:
    top = 0.9 * H
    cv.paint(cyl(-5, top, 0, yv, 14 * s, 12 * s), T.DISC, 80.0, 0.6)
    z0, marrow = float(rng.uniform(-10, 0)), float(rng.uniform(0.9, 1.4))
    while z0 < top:
        h = (15.0 if z0 > 0.2 * H else 19.0) * s
        body = cyl(z0, min(z0 + h, top), 0, yv, 14 * s, 12 * s)
        cv.paint(body, T.CORTEX, 750.0, 0.8)
        body.shrink = 2.0
        cv.paint(body, T.MARROW, 230.0, marrow)
        zc = z0 + h / 2
        cv.paint(Ellipsoid(np.array([0, yv - 22 * s, zc]), np.array([14 * s, 12 * s, h / 2])), T.CORTEX, 600.0, 0.8)
        cv.paint(Capsule(np.array([0, yv - 28 * s, zc]), np.array([0, yv - 48 * s, zc - 8]), 4 * s, 3 * s),
                 T.CORTEX, 550.0, 0.8)
        for side in (-1, 1):
            cv.paint(Capsule(np.array([side * 10 * s, yv - 4 * s, zc]), np.array([side * 26 * s, yv - 8 * s, zc]),
                             4 * s, 3 * s), T.CORTEX, 550.0, 0.8)
        z0 += h + 4.0 * s
    cv.paint(cyl(-5, H + 5, 0, yv - 22 * s, 7.5 * s, 7 * s), T.CORD, 25.0, 0.9)


def _skull_and_face(cv: Canvas, rng: np.random.Generator, yv: float, s: float, H: float, brain_suv: float) -> None:
    # posterior fossa: occipital bone shell with the cerebellum inside (the top slices)
    c = np.array([0, yv - 30 * s, H + 35])
    post = (T.FAT, T.MUSCLE, T.SOFT, T.CORD, T.CORTEX, T.DISC, T.MARROW)
    cv.paint(Ellipsoid(c, np.array([62 * s, 55 * s, 60])), T.CORTEX, 800.0, 0.8, post)
    cv.paint(Ellipsoid(c, np.array([56 * s, 49 * s, 54])), T.BRAIN, 35.0, brain_suv, (T.CORTEX,))
    cv.paint(cyl(0.86 * H, H + 5, 0, yv + 8 * s, 12 * s, 9 * s), T.CORTEX, 700.0, 0.9)  # clivus / skull base
    for side in (-1, 1):
        cv.paint(Ellipsoid(np.array([side * 55 * s, yv - 12 * s, 0.93 * H]), np.array([13, 13, 18]) * s),
                 T.CORTEX, 650.0, 0.8)
        sinus = Ellipsoid(np.array([side * 24 * s, yv + 72 * s, 0.93 * H]), np.array([17, 19, 0.08 * H / s]) * s)
        cv.paint(sinus, T.CORTEX, 500.0, 0.6, NECK)
        cv.paint(Ellipsoid(sinus.c, sinus.r - 2.0), T.AIRWAY, -1000.0, 0.0, (T.CORTEX,))
    cv.paint(cyl(0.86 * H, H + 5, 0, yv + 75 * s, 5 * s, 18 * s), T.AIRWAY, -1000.0, 0.0, NECK)  # nasal cavity
    # maxillary alveolar arch with upper teeth, mandible (body, then rami), lower teeth
    arch = np.array([[-42, 22], [-40, 50], [-26, 72], [0, 80], [26, 72], [40, 50], [42, 22]]) * s
    arch[:, 1] += yv
    zt = 0.8 * H
    for a in range(len(arch) - 1):
        p0, p1 = np.append(arch[a] * 0.95, zt - 6), np.append(arch[a + 1] * 0.95, zt + 8)
        cv.paint(Capsule(p0, p1, 6 * s, 6 * s, flat=True), T.CORTEX, 900.0, 0.8, NECK)
        cv.paint(Capsule(p0, np.array([p1[0], p1[1], zt - 1]), 3.5 * s, 3.5 * s, flat=True), T.TEETH,
                 1800.0, 0.6, (T.CORTEX,))
    zm = 0.6 * H
    for a in range(len(arch) - 1):
        p0, p1 = np.append(arch[a], zm), np.append(arch[a + 1], zm + 0.12 * H)
        cv.paint(Capsule(p0, p1, 4.5 * s, 4.5 * s, flat=True), T.CORTEX, 950.0, 0.8, NECK + (T.GLAND,))
        cv.paint(Capsule(p0, p1, 2.2 * s, 2.2 * s, flat=True), T.MARROW, 250.0, 0.9, (T.CORTEX,))
        cv.paint(Capsule(np.array([p0[0], p0[1], zm + 0.1 * H]), p1, 3.0 * s, 3.0 * s, flat=True), T.TEETH,
                 1800.0, 0.6, (T.CORTEX, T.MARROW))
    for side in (0, -1):
        base = np.append(arch[side], zm + 0.02 * H)
        top = np.array([arch[side][0] * 1.12, yv + 8 * s, 0.9 * H])
        paint_tube(cv, np.array([base, top]), np.array([5, 4]) * s, T.CORTEX, 900.0, 0.8, NECK + (T.GLAND,))


def paint_headneck(cv: Canvas, rng: np.random.Generator, H: float, s: float) -> dict[str, object]:
    """Paint a healthy head-and-neck region on ``cv``; returns anatomy used for tumour placement."""
    body = _outline(rng, H, s)
    _table(cv, float(-np.max(body.by_neg) - 2.0), H)
    fat_field = Field.random(rng, (40, 120))
    cv.paint(body, T.FAT, textured(-100.0, 8.0, fat_field), 0.3)
    yv = -12.0 * s
    muscle, muscle_suv = textured(50.0, 5.0, fat_field), float(rng.uniform(0.6, 0.9))
    f = np.array([-0.03, 0.1, 0.2, 0.5, 0.85, 1.03]) * H
    post = Extrusion(f, np.zeros(6), np.full(6, yv - 32 * s), np.array([150, 120, 55, 48, 55, 60]) * s,
                     np.array([150, 120, 55, 48, 55, 60]) * s, np.full(6, 22 * s), np.array([60, 50, 30, 30, 40, 45]) * s)
    core = Extrusion(body.zk, body.cx, body.cy, body.ax_pos, body.ax_neg, body.by_pos, body.by_neg, body.p,
                     body.harm, shrink=float(rng.uniform(5, 12)) * s)
    cv.paint(core, T.MUSCLE, muscle, muscle_suv, (T.FAT,))
    cv.paint(post, T.MUSCLE, muscle, muscle_suv, (T.FAT,))
    for side in (-1, 1):  # fat of the carotid / parapharyngeal spaces, sternocleidomastoids, shoulders
        fw, fd = np.array([16, 15, 16]) * s, np.array([18, 15, 14]) * s
        cv.paint(Extrusion(np.array([0.12, 0.5, 0.85]) * H, side * 33 * s, yv + np.array([28, 22, 12]) * s,
                           fw, fw, fd, fd),
                 T.FAT, textured(-95.0, 8.0, fat_field), 0.3, (T.MUSCLE,))
        scm = np.array([[side * 58 * s, yv - 12 * s, 0.92 * H], [side * 54 * s, yv + 14 * s, 0.55 * H],
                        [side * 38 * s, yv + 42 * s, 0.2 * H], [side * 22 * s, yv + 55 * s, 0.08 * H]])
        paint_tube(cv, scm, np.array([10.5, 11.5, 9.5, 8.5]) * s, T.FAT, -95.0, 0.3, (T.MUSCLE, T.FAT))
        paint_tube(cv, scm, np.array([9, 10, 8, 7]) * s, T.MUSCLE, muscle, 0.9, (T.FAT,))
        cv.paint(Ellipsoid(np.array([side * 135 * s, -5 * s, 0.02 * H]), np.array([45, 60, 0.14 * H / s]) * s),
                 T.MUSCLE, muscle, muscle_suv, (T.FAT,))
        hum = Ellipsoid(np.array([side * 160 * s, -5 * s, -0.02 * H]), np.array([24, 24, 30]) * s)
        cv.paint(hum, T.CORTEX, 700.0, 0.8, (T.MUSCLE, T.FAT))
        cv.paint(Ellipsoid(hum.c, hum.r - 3), T.MARROW, 150.0, 0.9, (T.CORTEX,))
        lung = Ellipsoid(np.array([side * 52 * s, yv + 5 * s, -0.05 * H]), np.array([48 * s, 52 * s, 0.2 * H]))
        cv.paint(lung, T.LUNG, textured(-850.0, 15.0, fat_field), 0.4, (T.FAT, T.MUSCLE))
        clav = np.array([[side * 18 * s, yv + 62 * s, 0.1 * H], [side * 70 * s, yv + 58 * s, 0.13 * H],
                         [side * 135 * s, yv + 20 * s, 0.12 * H]])
        paint_tube(cv, clav, np.array([8, 7, 7]) * s, T.CORTEX, 750.0, 0.8, (T.FAT, T.MUSCLE, T.LUNG))
        paint_tube(cv, clav, np.array([4.5, 4, 4]) * s, T.MARROW, 200.0, 1.0, (T.CORTEX,))
    cv.paint(cyl(0.2 * H, 0.55 * H, 0, yv + 52 * s, 24 * s, 5 * s), T.MUSCLE, muscle, muscle_suv, (T.FAT,))

    # pharynx / larynx / trachea (soft-tissue wall, then air), oesophagus, tongue and oral cavity
    zk = np.array([-5, 0.33 * H, 0.5 * H, 0.58 * H, 0.85 * H, 0.95 * H])
    ycen = yv + np.array([28, 32, 36, 30, 24, 28]) * s
    ax = np.array([8, 8, 9, 16, 15, 12]) * s
    by = np.array([7.5, 7.5, 8, 7, 6, 8]) * s
    air = Extrusion(zk, np.zeros(6), ycen, ax + 4 * s, ax + 4 * s, by + 4 * s, by + 4 * s)
    cv.paint(air, T.SOFT, 45.0, float(rng.uniform(1.0, 1.6)), NECK)
    lar = cyl(0.36 * H, 0.55 * H, 0, yv + 38 * s, 22 * s, 19 * s)
    cv.paint(lar, T.CARTILAGE, float(rng.uniform(150, 400)), 0.7, NECK)
    lar.shrink = 2.0
    cv.paint(lar, T.SOFT, 45.0, float(rng.uniform(1.2, 2.0)), (T.CARTILAGE,))
    cv.paint(Extrusion(zk, np.zeros(6), ycen, ax, ax, by, by), T.AIRWAY, -1000.0, 0.0, (T.SOFT,))
    cv.paint(cyl(-5, 0.42 * H, 0, yv + 16 * s, 7 * s, 6 * s), T.SOFT, 40.0, 1.3, NECK)
    tongue = Ellipsoid(np.array([0, yv + 55 * s, 0.72 * H]), np.array([28 * s, 28 * s, 0.09 * H]))
    cv.paint(tongue, T.MUSCLE, 60.0, float(rng.uniform(1.3, 2.5)), NECK)
    if rng.random() < 0.6:
        cv.paint(Ellipsoid(np.array([0, yv + 62 * s, 0.805 * H]), np.array([22 * s, 20 * s, 3])), T.AIRWAY,
                 -1000.0, 0.0, NECK)

    # glands, tonsils, vessels, normal lymph nodes
    gl = float(rng.uniform(2.0, 4.0))
    for side in (-1, 1):
        cv.paint(Ellipsoid(np.array([side * 50 * s, yv - 2 * s, 0.8 * H]), np.array([14 * s, 22 * s, 0.1 * H])),
                 T.GLAND, float(rng.uniform(-20, 20)), gl * rng.uniform(0.85, 1.15), NECK)
        cv.paint(Ellipsoid(np.array([side * 36 * s, yv + 44 * s, 0.6 * H]), np.array([12, 14, 13]) * s),
                 T.GLAND, 40.0, gl * rng.uniform(0.85, 1.15), NECK)
        cv.paint(Ellipsoid(np.array([side * 16 * s, yv + 30 * s, 0.72 * H]), np.array([8, 8, 11]) * s),
                 T.GLAND, 45.0, float(rng.uniform(2.0, 4.0)), NECK + (T.AIRWAY,))
        cv.paint(Ellipsoid(np.array([side * 19 * s, yv + 33 * s, 0.27 * H]), np.array([9, 12, 0.07 * H / s]) * s),
                 T.GLAND, 95.0, float(rng.uniform(1.2, 2.0)), NECK)
    blood = float(rng.uniform(1.5, 2.0))
    for side in (-1, 1):
        for dx, dy, r in ((24, 22, 4), (34, 18, 6)):
            pts = np.array([[side * dx * s * 0.8, yv + dy * s, -5], [side * dx * s, yv + dy * s, 0.5 * H],
                            [side * (dx + 8) * s, yv + (dy - 10) * s, 0.88 * H]])
            paint_tube(cv, pts, np.full(3, r * s), T.BLOOD, 40.0, blood, NECK + (T.GLAND,))
    n_nodes = int(rng.integers(3, 9))
    for _ in range(n_nodes):
        side = int(rng.choice([-1, 1]))
        c = np.array([side * rng.uniform(36, 48) * s, yv + rng.uniform(10, 34) * s, rng.uniform(0.3, 0.75) * H])
        cv.paint(Ellipsoid(c, rng.uniform(3, 6, size=3)), T.NODE, 30.0, float(rng.uniform(1.0, 1.5)), NECK)

    _spine(cv, rng, yv, s, H)
    _skull_and_face(cv, rng, yv, s, H, float(rng.uniform(6.0, 9.0)))
    return {"yv": yv, "n_nodes": n_nodes, "H": H, "s": s}


def headneck_tumours(cv: Canvas, rng: np.random.Generator, anat: dict[str, object], n_nodes: int) -> list[dict[str, object]]:
    """Paint a primary (oropharynx/larynx region) plus ``n_nodes`` nodal metastases (level II-III)."""
    yv, s, H = (float(anat[k]) for k in ("yv", "s", "H"))  # type: ignore[arg-type]
    sites = {"tonsil": (16, 30, 0.72), "base_of_tongue": (6, 44, 0.64), "supraglottic_larynx": (8, 38, 0.48),
             "hypopharynx": (16, 24, 0.42)}
    out: list[dict[str, object]] = []
    only = SOFT_TISSUES + (T.AIRWAY, T.GLAND, T.BLOOD)
    for t in range(1 + n_nodes):
        side = int(rng.choice([-1, 1]))
        if t == 0:
            site = str(rng.choice(list(sites)))
            dx, dy, fz = sites[site]

            def propose(sd: int = side, dx: float = dx, dy: float = dy, fz: float = fz) -> tuple[Arr, float]:
                c = np.array([sd * dx * s, yv + dy * s, fz * H]) + rng.normal(0, 3, size=3)
                return c, float(rng.uniform(15, 50))

            suv = float(rng.uniform(5, 15))
        else:
            site = "node_level_" + str(rng.choice(["II", "III"]))
            zr = (0.55, 0.68) if site.endswith("II") else (0.42, 0.55)

            def propose_node(sd: int = side, zr: tuple[float, float] = zr) -> tuple[Arr, float]:
                c = np.array([sd * rng.uniform(34, 44) * s, yv + rng.uniform(14, 30) * s, rng.uniform(*zr) * H])
                return c, float(rng.uniform(10, 30))

            propose = propose_node  # type: ignore[assignment]

            suv = float(rng.uniform(3, 12))
        placed = place_tumour(cv, rng, propose, only)
        if placed is None:
            continue
        shape, c, diam = placed
        if t > 0:  # nodes are rounder: keep the main sphere only
            shape.cs, shape.rs = shape.cs[:1], shape.rs[:1] / 0.85
        n_vox, necrotic = paint_tumour(cv, rng, shape, c, diam, suv, only, t + 1)
        out.append({"id": t + 1, "site": site, "side": "right" if side > 0 else "left",
                    "centre_mm": [round(float(v), 1) for v in c], "nominal_diameter_mm": round(diam, 1),
                    "target_suv_max": round(suv, 2), "necrotic": necrotic})
    return out
