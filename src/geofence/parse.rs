//! GeoJSON reading and writing, by hand on `serde_json::Value`: the subset
//! needed is small, and walking the `Value` lets us count positions before
//! allocating anything, which a typed GeoJSON parser would not.

use serde_json::{json, Map, Value};

use super::{
    Circle, Corridor, Polygon, Shape, ShapeError, MAX_ABS_LAT, MAX_EXTENT_M, MAX_VERTICES,
    M_PER_DEG,
};

pub(super) fn from_geojson(v: &Value) -> Result<Shape, ShapeError> {
    let obj = v.as_object().ok_or(ShapeError::NotAnObject)?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ShapeError::MissingType)?;
    let (geom, props) = if ty == "Feature" {
        let g = obj
            .get("geometry")
            .and_then(Value::as_object)
            .ok_or(ShapeError::MissingGeometry)?;
        (g, obj.get("properties").and_then(Value::as_object))
    } else {
        (obj, None)
    };
    let gty = geom
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ShapeError::MissingType)?;
    let coords = || {
        geom.get("coordinates")
            .ok_or(ShapeError::Malformed("geometry has no \"coordinates\""))
    };
    match gty {
        "Polygon" => {
            let c = coords()?;
            let mut count = 0;
            count_positions(c, 2, &mut count)?;
            let rings = read_rings(c)?;
            Shape::polygon(rings)
        }
        "MultiPolygon" => {
            let c = coords()?;
            let mut count = 0;
            count_positions(c, 3, &mut count)?;
            let polys = array(c, "MultiPolygon coordinates must be an array of polygons")?
                .iter()
                .map(read_rings)
                .collect::<Result<Vec<_>, _>>()?;
            Shape::multipolygon(polys)
        }
        "Point" => {
            let p = read_position(coords()?)?;
            let r = number_prop(props, "radius_m").ok_or(ShapeError::MissingRadius)?;
            Shape::circle(p[1], p[0], r)
        }
        "LineString" => {
            let c = coords()?;
            let mut count = 0;
            count_positions(c, 1, &mut count)?;
            let line = read_line(c)?;
            let w = number_prop(props, "width_m").ok_or(ShapeError::MissingWidth)?;
            Shape::corridor(line, w)
        }
        other => Err(ShapeError::UnsupportedType(truncate(other))),
    }
}

/// Keeps hostile type names from bloating error messages and logs.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn number_prop(props: Option<&Map<String, Value>>, key: &str) -> Option<f64> {
    props?.get(key)?.as_f64()
}

fn array<'a>(v: &'a Value, what: &'static str) -> Result<&'a Vec<Value>, ShapeError> {
    v.as_array().ok_or(ShapeError::Malformed(what))
}

/// Counts positions `depth` array levels down, failing as soon as the
/// limit is passed so that nothing proportional to hostile input is built.
fn count_positions(v: &Value, depth: usize, count: &mut usize) -> Result<(), ShapeError> {
    let a = array(
        v,
        "coordinates are not nested arrays as the geometry type requires",
    )?;
    if depth == 1 {
        *count += a.len();
        if *count > MAX_VERTICES {
            return Err(ShapeError::TooManyVertices {
                count: *count,
                max: MAX_VERTICES,
            });
        }
        return Ok(());
    }
    for x in a {
        count_positions(x, depth - 1, count)?;
    }
    Ok(())
}

fn read_position(v: &Value) -> Result<[f64; 2], ShapeError> {
    let a = array(v, "a position must be an array of 2 or 3 numbers")?;
    if a.len() < 2 || a.len() > 3 {
        return Err(ShapeError::Malformed(
            "a position must be an array of 2 or 3 numbers",
        ));
    }
    let mut out = [0.0; 2];
    for (i, x) in a.iter().enumerate() {
        let f = match x {
            Value::Number(n) => n.as_f64().ok_or(ShapeError::NonFinite)?,
            // serde_json turns NaN/inf into null when building a Value.
            Value::Null => return Err(ShapeError::NonFinite),
            _ => {
                return Err(ShapeError::Malformed(
                    "a position must be an array of 2 or 3 numbers",
                ))
            }
        };
        if i < 2 {
            out[i] = f;
        }
    }
    check_position(out[0], out[1])?;
    Ok(out)
}

fn read_line(v: &Value) -> Result<Vec<[f64; 2]>, ShapeError> {
    array(v, "a ring or line must be an array of positions")?
        .iter()
        .map(read_position)
        .collect()
}

fn read_rings(v: &Value) -> Result<Vec<Vec<[f64; 2]>>, ShapeError> {
    array(v, "Polygon coordinates must be an array of rings")?
        .iter()
        .map(read_line)
        .collect()
}

pub(super) fn check_position(lon: f64, lat: f64) -> Result<(), ShapeError> {
    if !lon.is_finite() || !lat.is_finite() {
        return Err(ShapeError::NonFinite);
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ShapeError::LongitudeOutOfRange(lon));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ShapeError::LatitudeOutOfRange(lat));
    }
    Ok(())
}

pub(super) fn check_polygon(
    rings: Vec<Vec<[f64; 2]>>,
    count: &mut usize,
) -> Result<Polygon, ShapeError> {
    if rings.is_empty() {
        return Err(ShapeError::Empty("Polygon"));
    }
    for (i, ring) in rings.iter().enumerate() {
        *count += ring.len();
        if *count > MAX_VERTICES {
            return Err(ShapeError::TooManyVertices {
                count: *count,
                max: MAX_VERTICES,
            });
        }
        for p in ring {
            check_position(p[0], p[1])?;
        }
        if ring.len() < 4 {
            return Err(ShapeError::RingTooShort {
                ring: i,
                len: ring.len(),
            });
        }
        if ring.first() != ring.last() {
            return Err(ShapeError::RingNotClosed { ring: i });
        }
    }
    Ok(Polygon { rings })
}

/// Extent rules (see the module docs): longitude span below 180°, within
/// ±MAX_ABS_LAT, and at most MAX_EXTENT_M each way including `pad_m`.
pub(super) fn check_extent<'a>(
    pts: impl Iterator<Item = &'a [f64; 2]>,
    pad_m: f64,
) -> Result<(), ShapeError> {
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for p in pts {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    if x1 < x0 {
        return Ok(());
    }
    if x1 - x0 >= 180.0 {
        return Err(ShapeError::CrossesAntimeridian);
    }
    let pad_deg = pad_m / M_PER_DEG;
    let pole = y0.abs().max(y1.abs()) + pad_deg;
    if pole > MAX_ABS_LAT {
        let reach = if y1.abs() >= y0.abs() {
            y1.abs() + pad_deg
        } else {
            -(y0.abs() + pad_deg)
        };
        return Err(ShapeError::TooCloseToPole(reach));
    }
    // The widest parallel in the box is the one nearest the equator.
    let widest = if y0 <= 0.0 && y1 >= 0.0 {
        0.0
    } else {
        y0.abs().min(y1.abs())
    };
    let height = (y1 - y0) * M_PER_DEG + 2.0 * pad_m;
    let width = (x1 - x0) * M_PER_DEG * widest.to_radians().cos() + 2.0 * pad_m;
    let extent = height.max(width);
    if extent > MAX_EXTENT_M {
        return Err(ShapeError::TooLarge {
            extent_m: extent,
            max_m: MAX_EXTENT_M,
        });
    }
    Ok(())
}

fn positions(ps: &[[f64; 2]]) -> Value {
    Value::Array(ps.iter().map(|p| json!([p[0], p[1]])).collect())
}

fn rings(p: &Polygon) -> Value {
    Value::Array(p.rings.iter().map(|r| positions(r)).collect())
}

pub(super) fn to_geojson(s: &Shape) -> Value {
    let (geometry, properties) = match s {
        Shape::Polygon(p) => (
            json!({"type": "Polygon", "coordinates": rings(p)}),
            json!({}),
        ),
        Shape::MultiPolygon(ps) => (
            json!({"type": "MultiPolygon", "coordinates": Value::Array(ps.iter().map(rings).collect())}),
            json!({}),
        ),
        Shape::Circle(Circle { lon, lat, radius_m }) => (
            json!({"type": "Point", "coordinates": [lon, lat]}),
            json!({"radius_m": radius_m}),
        ),
        Shape::Corridor(Corridor { line, width_m }) => (
            json!({"type": "LineString", "coordinates": positions(line)}),
            json!({"width_m": width_m}),
        ),
    };
    json!({"type": "Feature", "geometry": geometry, "properties": properties})
}
