"""Thorax (NSCLC-like) phantom anatomy, painted on a :class:`~autopaint.data.phantom_common.Canvas`.

Patient frame (mm): x towards the patient's Right, y Anterior, z Superior; z = 0 at the caudal end
of the scan (upper abdomen: liver dome), z = H at the cranial end (above the lung apices).
CT values in HU, activity in SUV (FDG, before PSF blur).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autopaint.data.phantom_common import (
    Canvas,
    Capsule,
    Ellipsoid,
    Extrusion,
    Field,
    FuncShape,
    Shape,
    T,
    cyl,
    paint_tube,
    paint_tumour,
    place_tumour,
    textured,
)

Arr = np.ndarray


def _harm(rng: np.random.Generator, amp: float) -> tuple[tuple[int, float, float], ...]:
    return tuple((m, float(rng.uniform(0.3, 1.0) * amp / m), float(rng.uniform(0, 2 * np.pi)))
                 for m in range(2, 6))


def _table(cv: Canvas, y_top: float, H: float) -> None:
    def inside(x: Arr, y: Arr, z: Arr, lo: float, hi: float) -> Arr:
        yt = y_top + 0.0012 * x * x  # cradle curving up at the sides
        return (y <= yt - lo) & (y >= yt - hi) & (np.abs(x) < 230) & (z > -1e9)

    box = (np.array([-230.0, y_top - 40, -10]), np.array([230.0, y_top + 70, H + 10]))
    cv.paint(FuncShape(*box, lambda x, y, z: inside(x, y, z, 2.0, 14.0)), T.TABLE, 250.0, 0.0)
    cv.paint(FuncShape(*box, lambda x, y, z: inside(x, y, z, 4.0, 12.0)), T.TABLE, -880.0, 0.0)


def _spine(cv: Canvas, rng: np.random.Generator, yv: float, s: float, H: float) -> None:
    cv.paint(cyl(-5, H + 5, 0, yv, 19 * s, 16 * s), T.DISC, 80.0, 0.6)
    height, gap = 22.0 * s, 5.0 * s
    z0 = float(rng.uniform(-height, 0))
    marrow_suv = float(rng.uniform(0.9, 1.4))
    while z0 < H + 5:
        body = cyl(z0, z0 + height, 0, yv, 19 * s, 16 * s)
        cv.paint(body, T.CORTEX, 750.0, 0.8)
        body.shrink = 2.5
        cv.paint(body, T.MARROW, 220.0, marrow_suv)
        zc = z0 + height / 2
        arch = Ellipsoid(np.array([0, yv - 26 * s, zc]), np.array([14 * s, 12 * s, height / 2]))
        cv.paint(arch, T.CORTEX, 600.0, 0.8)
        for side in (-1, 1):
            cv.paint(Capsule(np.array([side * 8 * s, yv - 24 * s, zc]), np.array([side * 38 * s, yv - 30 * s, zc]),
                             5 * s, 4 * s), T.CORTEX, 550.0, 0.8)
        cv.paint(Capsule(np.array([0, yv - 32 * s, zc]), np.array([0, yv - 58 * s, zc - 12 * s]), 5 * s, 3.5 * s),
                 T.CORTEX, 550.0, 0.8)
        z0 += height + gap
    cv.paint(cyl(-5, H + 5, 0, yv - 26 * s, 8 * s, 8 * s), T.CORD, 25.0, 0.9)


def _ribs(cv: Canvas, cav: Extrusion, yv: float, s: float, H: float, rng: np.random.Generator) -> None:
    z = float(rng.uniform(0.02, 0.1) * H)
    step = 26.0 * s
    while z < 1.02 * H:
        cx, cy, axp, axn, byp, byn = (float(v) for v in cav.at(min(z, cav.zk[-1])))
        for side in (-1, 1):
            ang = np.linspace(-1.95, 1.05, 14)  # from posterior (near the spine) round to anterior
            ax = axp if side > 0 else axn
            px = side * (ax + 4 * s) * np.cos(ang)
            py = cy + np.where(np.sin(ang) > 0, byp, byn) * np.sin(ang) * 1.04
            px[0] = side * 30 * s
            py[0] = yv - 22 * s
            pz = z - ((ang - ang[0]) / (ang[-1] - ang[0])) ** 1.3 * 90 * s
            pts = np.stack([px, py, pz], axis=1)
            only = (T.MUSCLE, T.MEDFAT, T.FAT, T.LUNG, T.VESSEL)
            paint_tube(cv, pts[:-2], np.full(12, 5.5 * s), T.CORTEX, 700.0, 0.8, only)
            paint_tube(cv, pts[:-2], np.full(12, 3.0 * s), T.MARROW, 200.0, 1.0, (T.CORTEX,))
            end = np.array([side * 12 * s, pts[-1, 1], pts[-1, 2] - 5])
            paint_tube(cv, np.vstack([pts[-3:], end]), np.full(4, 4.5 * s), T.CARTILAGE, 120.0, 0.7, only)
        z += step


def _tree(cv: Canvas, rng: np.random.Generator, start: Arr, direction: Arr, radius: float, gens: int,
          tissue: int, hu: float, suv: float, wall: float = 0.0) -> None:
    """Recursive branching tube inside the lung (vessels, or bronchi with a soft-tissue wall)."""
    stack = [(np.asarray(start, float), np.asarray(direction, float), radius, 0)]
    only = (T.LUNG, T.VESSEL, T.AIRWAY, T.SOFT) if wall else (T.LUNG,)
    while stack:
        p, d, r, g = stack.pop()
        length = rng.uniform(5.0, 9.0) * r + 9.0
        q = p + d * length
        if wall:
            cv.paint(Capsule(p, q, r + wall, 0.85 * r + wall), T.SOFT, 50.0, 0.6, only)
            cv.paint(Capsule(p, q, r, 0.85 * r), T.AIRWAY, -990.0, 0.0, (T.SOFT,))
        else:
            cv.paint(Capsule(p, q, r, 0.85 * r), tissue, hu, suv, only)
        if g + 1 >= gens or r < 0.6:
            continue
        for _ in range(2):
            nd = d + rng.normal(scale=0.45, size=3)
            stack.append((q, nd / np.linalg.norm(nd), r * rng.uniform(0.68, 0.85), g + 1))


def _lungs(cv: Canvas, rng: np.random.Generator, s: float, H: float, cav: Extrusion) -> dict[int, Shape]:
    """Each lung fills its half of the thoracic cavity (2 mm inside it), narrowing to a dome at the apex."""
    hu_field, grad = Field.random(rng, (25, 70)), float(rng.uniform(30, 70))
    inner = Extrusion(cav.zk, cav.cx, cav.cy, cav.ax_pos, cav.ax_neg, cav.by_pos, cav.by_neg, cav.p,
                      cav.harm, shrink=2.0)
    apex_z = float(rng.uniform(0.95, 0.99) * H)
    lungs: dict[int, Shape] = {}
    for side in (-1, 1):
        env = Ellipsoid(np.array([side * 60 * s, -10 * s, 0.45 * H]),
                        np.array([120 * s, 130 * s, apex_z - 0.45 * H]))

        def inside(x: Arr, y: Arr, z: Arr, sd: int = side, e: Ellipsoid = env) -> Arr:
            return inner.contains(x, y, z) & (sd * x > 2.0) & ((z <= 0.45 * H) | e.contains(x, y, z))

        lo, hi = inner.bbox()
        lo[0], hi[0] = (2.0, hi[0]) if side > 0 else (lo[0], -2.0)
        hi[2] = min(hi[2], apex_z)
        lung = FuncShape(lo, hi, inside)
        base = -860.0 - 10 * side

        def lung_hu(x: Arr, y: Arr, z: Arr, b: float = base) -> Arr:
            return b - grad * np.clip(-y / (90 * s), -1, 1) + 18.0 * hu_field(x, y, z)

        cv.paint(lung, T.LUNG, lung_hu, float(rng.uniform(0.3, 0.5)), only=(T.MEDFAT,))
        lungs[side] = lung
    return lungs


def _mediastinum(cv: Canvas, rng: np.random.Generator, s: float, H: float, yv: float, y_st: float) -> None:
    zk = np.array([-5.0, 0.35 * H, 0.6 * H, 0.72 * H, 0.85 * H, H + 5])
    w = np.array([30, 34, 30, 32, 22, 20]) * s * rng.uniform(0.9, 1.1)
    yc, half = (y_st + yv) / 2, (y_st - yv) / 2
    med = Extrusion(zk, np.full(6, -4 * s), np.full(6, yc), w, w, np.full(6, half), np.full(6, half), p=2.6)
    cv.paint(med, T.MEDFAT, -90.0, 0.35, (T.LUNG,))


def paint_thorax(cv: Canvas, rng: np.random.Generator, H: float, s: float) -> dict[str, object]:
    """Paint a healthy thorax on ``cv``; returns anatomy parameters used later (tumour placement).

    The parts are painted in a fixed order and draw from ``rng`` in that order (same seed -> same
    patient): body wall, lungs, mediastinum, great vessels and airways, upper abdomen, heart, skeleton."""
    wall = _body_wall(cv, rng, H, s)
    lungs = _lungs(cv, rng, s, H, wall.cav)
    y_st = float(wall.cav.at(0.6 * H)[4]) + 4 * s
    _mediastinum(cv, rng, s, H, wall.yv, y_st)
    blood, hila = _vessels_and_airways(cv, rng, H, s, wall.yv)
    dome = _upper_abdomen(cv, rng, H, s, wall.fat_field)
    myo_suv = _heart(cv, rng, s, dome, blood)
    _skeleton(cv, rng, H, s, wall, y_st)
    return {"lungs": lungs, "hila": hila, "yv": wall.yv, "myo_suv": myo_suv, "breast": wall.breast, "dome_z": dome}


@dataclass(frozen=True)
class _Wall:
    """What the body wall leaves for the later parts: the thoracic cavity, the spine's y, fat texture."""

    cav: Extrusion
    yv: float
    fat_field: Field
    t_fat: float
    b_post: Arr
    breast: bool


def _body_wall(cv: Canvas, rng: np.random.Generator, H: float, s: float) -> _Wall:
    """Body outline (fat), muscle layer, mediastinal fat cavity, breasts, paraspinal muscles, disc."""
    hb = rng.uniform(0.92, 1.08, size=3)
    zf = np.array([-5.0, 0.3 * H, 0.6 * H, 0.85 * H, H + 5])
    a = 158 * s * hb[0] * np.array([1.02, 1.0, 0.98, 0.95, 0.92])
    b_ant = 112 * s * hb[1] * np.array([1.05, 1.03, 1.0, 0.95, 0.9])
    b_post = 108 * s * hb[2] * np.ones(5)
    body = Extrusion(zf, np.zeros(5), np.zeros(5), a, a, b_ant, b_post, p=2.5, harm=_harm(rng, 0.05))
    _table(cv, float(-b_post.max() - 2.0), H)
    fat_field = Field.random(rng, (40, 120))
    muscle_suv = float(rng.uniform(0.6, 0.9))
    cv.paint(body, T.FAT, textured(-100.0, 8.0, fat_field), 0.3)
    t_fat = float(rng.uniform(8, 28)) * s
    muscle = Extrusion(zf, body.cx, body.cy, a - t_fat, a - t_fat, b_ant - t_fat, b_post - t_fat,
                       p=2.5, harm=_harm(rng, 0.04))
    cv.paint(muscle, T.MUSCLE, textured(45.0, 6.0, fat_field), muscle_suv, only=(T.FAT,))
    tm = float(rng.uniform(12, 20)) * s
    cav = Extrusion(zf, np.zeros(5), np.full(5, 5.0 * s), a - t_fat - tm, a - t_fat - tm,
                    b_ant - t_fat - tm - 5 * s, b_post - t_fat - tm - 5 * s, p=2.2)
    cv.paint(cav, T.MEDFAT, textured(-90.0, 8.0, fat_field), 0.35, only=(T.MUSCLE, T.FAT))
    yv = float(-(b_post.mean() - t_fat - tm - 5 * s) + 24 * s)
    breast = rng.random() < 0.35
    if breast:
        for side in (-1, 1):
            cv.paint(Ellipsoid(np.array([side * 72 * s, b_ant[2] - 22 * s, 0.45 * H]), np.array([62, 40, 55]) * s),
                     T.FAT, textured(-70.0, 25.0, fat_field), 0.35, only=(T.AIR, T.FAT))
    for side in (-1, 1):  # paraspinal muscles indent the cavity beside the spine
        cv.paint(cyl(-5, H + 5, side * 30 * s, yv - 34 * s, 27 * s, 30 * s), T.MUSCLE, textured(45.0, 6.0, fat_field),
                 muscle_suv, (T.MEDFAT, T.MUSCLE))
    cv.paint(cyl(-5, H + 5, 0, yv, 21 * s, 18 * s), T.DISC, 80.0, 0.6)
    return _Wall(cav, yv, fat_field, t_fat, b_post, bool(breast))


def _vessels_and_airways(cv: Canvas, rng: np.random.Generator, H: float, s: float, yv: float
                         ) -> tuple[float, dict[int, Arr]]:
    """Trachea, oesophagus, bronchial and vascular trees from the hila, aorta, great veins,
    pulmonary arteries; returns (blood-pool SUV, hilum centre per side)."""
    blood = float(rng.uniform(1.5, 2.0))
    zc = 0.62 * H + rng.uniform(-8, 8)
    trachea = np.array([[0, yv + 45 * s, H + 5], [0, yv + 42 * s, zc]])
    paint_tube(cv, trachea, np.array([10.5, 10.5]) * s, T.SOFT, 45.0, 0.8)
    paint_tube(cv, trachea, np.array([8.5, 8.5]) * s, T.AIRWAY, -1000.0, 0.0, (T.SOFT,))
    paint_tube(cv, np.array([[-6 * s, yv + 26 * s, H + 5], [-10 * s, yv + 24 * s, -5]]), np.array([7, 7]) * s,
               T.SOFT, 40.0, float(rng.uniform(1.1, 1.6)))
    hila = {}
    for side in (-1, 1):
        hilum = np.array([side * 45 * s, yv + 45 * s, zc - (16 if side > 0 else 22) * s])
        hila[side] = hilum
        bron = np.array([trachea[1], hilum])
        paint_tube(cv, bron, np.array([8, 6.5]) * s, T.SOFT, 45.0, 0.8)
        paint_tube(cv, bron, np.array([6, 5]) * s, T.AIRWAY, -1000.0, 0.0, (T.SOFT,))
        for _ in range(2):
            d = np.array([side * 0.6, rng.normal(0, 0.5), rng.choice([-1.0, 0.7])])
            _tree(cv, rng, hilum, d / np.linalg.norm(d), 4.0 * s, 3, T.AIRWAY, -1000.0, 0.0, wall=1.3 * s)
        for dv in ([side, 0, 1.2], [side, 0.8, 0.3], [side, -0.8, 0.2], [side, 0.5, -1], [side, -0.6, -1],
                  [side, 0.9, 1.0], [side, -0.9, 0.9], [side, 0, -0.6], [0.5 * side, 1, -0.2], [0.5 * side, -1, -0.3]):
            d = np.asarray(dv, float) + rng.normal(0, 0.25, size=3)
            _tree(cv, rng, hilum + [0, -6 * s, 0], d / np.linalg.norm(d), 5.5 * s, 8, T.VESSEL, 35.0, 1.0)
    aorta = np.array([[8, 28, 0.45 * H], [8, 28, 0.66 * H], [0, 12, 0.73 * H], [-18, -10, 0.74 * H],
                      [-24, -30, 0.68 * H], [-24, -38, 0.45 * H], [-20, -38, -5]]) * [s, s, 1]
    aorta[4:, 1] = yv + 24 * s
    ar = np.array([15, 15, 14, 13, 12, 12, 11]) * s * rng.uniform(0.9, 1.15)
    paint_tube(cv, aorta, ar, T.BLOOD, 40.0, blood, (T.MEDFAT, T.LUNG, T.VESSEL, T.SOFT, T.BLOOD))
    for x0, y0, r in ((30, 18, 9), (-16, 10, 5), (-28, 0, 5), (10, 10, 6)):
        pts = np.array([[x0 * s, y0 * s, 0.5 * H if x0 == 30 else 0.72 * H], [x0 * s, y0 * s, H + 5]])
        paint_tube(cv, pts, np.array([r, r]) * s, T.BLOOD, 40.0, blood, (T.MEDFAT, T.LUNG, T.VESSEL, T.SOFT))
    pa = np.array([[-12 * s, 30 * s, 0.48 * H], [-20 * s, 22 * s, 0.6 * H]])
    paint_tube(cv, pa, np.array([13, 13]) * s, T.BLOOD, 40.0, blood, (T.MEDFAT, T.LUNG, T.VESSEL))
    for side in (-1, 1):
        paint_tube(cv, np.array([pa[1], hila[side] + [0, -6 * s, 0]]), np.array([10, 8]) * s, T.BLOOD, 40.0,
                   blood, (T.MEDFAT, T.LUNG, T.VESSEL, T.SOFT))
    return blood, hila


def _upper_abdomen(cv: Canvas, rng: np.random.Generator, H: float, s: float, fat_field: Field) -> float:
    """Liver dome (right), spleen and stomach (left); returns the dome's z."""
    below = (T.LUNG, T.MEDFAT, T.VESSEL, T.SOFT, T.AIRWAY, T.BLOOD)
    dome = float(rng.uniform(0.18, 0.3) * H)
    cv.paint(Ellipsoid(np.array([40 * s, 5 * s, dome - 110]), np.array([120 * s, 100 * s, 110])), T.LIVER,
             textured(58.0, 5.0, fat_field), float(rng.uniform(2.0, 2.5)), below)
    ld = dome - rng.uniform(15, 35)
    cv.paint(Ellipsoid(np.array([-75 * s, -45 * s, ld - 60]), np.array([45 * s, 35 * s, 60])), T.SOFT, 45.0,
             float(rng.uniform(1.6, 2.0)), below)
    stomach = Ellipsoid(np.array([-45 * s, 25 * s, ld - 55]), np.array([55 * s, 45 * s, 55]))
    cv.paint(stomach, T.SOFT, 35.0, float(rng.uniform(1.2, 2.0)), below)
    cv.paint(Ellipsoid(stomach.c + [0, 10 * s, 30], np.array([35, 25, 22]) * s), T.AIRWAY, -1000.0, 0.0, (T.SOFT,))
    return dome


def _heart(cv: Canvas, rng: np.random.Generator, s: float, dome: float, blood: float) -> float:
    """Pericardial fat, chambers (blood pool) and left-ventricular myocardium; returns its SUV."""
    hc = np.array([-18 * s, 28 * s, dome + 45 + rng.uniform(-5, 10)])
    th = rng.uniform(0.5, 0.8)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.5), -np.sin(0.5)], [0, np.sin(0.5), np.cos(0.5)]])
    rot = rot @ tilt
    hr = np.array([56, 45, 50]) * s * rng.uniform(0.9, 1.1)
    heart_only = (T.LUNG, T.MEDFAT, T.VESSEL, T.SOFT, T.BLOOD, T.LIVER, T.AIRWAY)
    cv.paint(Ellipsoid(hc, hr + 5 * s, rot), T.MEDFAT, -95.0, 0.3, heart_only)
    cv.paint(Ellipsoid(hc, hr, rot), T.HEART, 40.0, blood, heart_only + (T.MEDFAT,))
    myo_suv = float(rng.uniform(1.5, 9.0))
    lv_c = hc + rot @ np.array([-18 * s, 0, -8 * s])
    lv_r = np.array([40, 30, 32]) * s
    myo_field = Field.random(rng, (40, 90), 4)
    cv.paint(Ellipsoid(lv_c, lv_r, rot), T.MYO, 42.0, textured(myo_suv, 0.25 * myo_suv, myo_field), (T.HEART,))
    cv.paint(Ellipsoid(lv_c, lv_r - 10 * s, rot), T.HEART, 40.0, blood, (T.MYO,))
    return myo_suv


def _skeleton(cv: Canvas, rng: np.random.Generator, H: float, s: float, wall: _Wall, y_st: float) -> None:
    """Spine, ribs, sternum and scapulae."""
    _spine(cv, rng, wall.yv, s, H)
    _ribs(cv, wall.cav, wall.yv, s, H, rng)
    sw, sd = np.array([13, 13, 24]) * s, np.array([7, 7, 9]) * s
    stern = Extrusion(np.array([0.33 * H, 0.82 * H, 0.9 * H]), 0.0, np.array([y_st, y_st, y_st - 3 * s]),
                      sw, sw, sd, sd)
    cv.paint(stern, T.CORTEX, 700.0, 0.8)
    stern.shrink = 2.0
    cv.paint(stern, T.MARROW, 180.0, 1.0, (T.CORTEX,))
    for side in (-1, 1):  # scapulae: thin oblique plates posterolateral to the rib cage
        c = np.array([side * 95 * s, -wall.b_post.mean() + wall.t_fat + 30 * s, 0.8 * H])
        ang = side * 0.55
        rot_s = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
        cv.paint(Ellipsoid(c, np.array([55, 5, 0.22 * H]) * [s, s, 1], rot_s), T.CORTEX, 650.0, 0.8, (T.MUSCLE,))


def benign_spots(cv: Canvas, rng: np.random.Generator, hila: dict[int, Arr], n: int) -> int:
    """Mildly avid benign lymph nodes (SUV ~2) near the hila / subcarina; returns how many were painted."""
    painted = 0
    for _ in range(n):
        side = int(rng.choice([-1, 1]))
        c = hila[side] + rng.normal(0, 6, size=3) - [side * 12, 0, 0]
        if cv.paint(Ellipsoid(c, rng.uniform(4, 6.5, size=3)), T.NODE, 35.0, float(rng.uniform(1.7, 2.4)),
                    (T.MEDFAT, T.LUNG, T.VESSEL, T.SOFT)):
            painted += 1
    return painted


def _march(cv: Canvas, p: Arr, d: Arr, ok: tuple[int, ...], step: float = 2.0, max_mm: float = 200.0) -> Arr:
    """Walk from p along unit d while the tissue stays in ``ok``; returns the last point inside."""
    q = p.copy()
    for _ in range(int(max_mm / step)):
        nxt = q + d * step
        if cv.tissue_at(nxt) not in ok:
            break
        q = nxt
    return q


def thorax_tumours(cv: Canvas, rng: np.random.Generator, anat: dict[str, object], n: int) -> list[dict[str, object]]:
    """Paint ``n`` NSCLC-like tumours in the lungs (intraparenchymal, juxtapleural, juxtamediastinal)."""
    lungs = anat["lungs"]
    assert isinstance(lungs, dict)
    out: list[dict[str, object]] = []
    for t in range(n):
        side = int(rng.choice([-1, 1]))
        lo, hi = lungs[side].bbox()
        kind = str(rng.choice(["intraparenchymal", "juxtapleural", "juxtamediastinal"], p=[0.45, 0.35, 0.2]))
        only: tuple[int, ...] = (T.LUNG, T.VESSEL, T.AIRWAY, T.SOFT, T.TUMOUR, T.NECROSIS)
        if kind == "juxtamediastinal":
            only = only + (T.MEDFAT, T.BLOOD)

        def propose(sd: int = side, lo: Arr = lo, hi: Arr = hi, kind: str = kind) -> tuple[Arr, float]:
            diam = float(np.exp(rng.uniform(np.log(12), np.log(55))))
            p = hi.copy()
            for _ in range(300):
                p = rng.uniform(lo + [0, 0, 0.15 * (hi[2] - lo[2])], hi - [0, 0, 15])
                if cv.tissue_at(p) in (T.LUNG, T.VESSEL):
                    break
            ok = (T.LUNG, T.VESSEL, T.TUMOUR)
            if kind != "intraparenchymal":
                d = (np.array([sd * rng.uniform(0.5, 1), rng.uniform(-1, 0.6), 0]) if kind == "juxtapleural"
                     else np.array([-sd * 1.0, rng.uniform(-0.3, 0.3), 0]))
                d /= np.linalg.norm(d)
                p = _march(cv, p, d, ok) - d * diam * 0.3
            return p, diam

        placed = place_tumour(cv, rng, propose, only)
        if placed is None:
            continue
        shape, c, diam = placed
        suv = float(rng.uniform(2.5, 15.0))
        n_vox, necrotic = paint_tumour(cv, rng, shape, c, diam, suv, only, t + 1)
        out.append({"id": t + 1, "site": kind, "side": "right" if side > 0 else "left",
                    "centre_mm": [round(float(v), 1) for v in c], "nominal_diameter_mm": round(diam, 1),
                    "target_suv_max": round(suv, 2), "necrotic": necrotic})
    return out
