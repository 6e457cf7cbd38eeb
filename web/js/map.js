// Leaflet maps that work offline: without a basemap (ui-config basemap_url
// null) they draw on a plain background with a graticule and a scale bar.
// Leaflet is loaded by index.html as a classic script (global L).

import { h, fmtMetres } from './dom.js';

let configPromise = null;

/** GET /ui-config.json once: {basemap_url, basemap_attribution}. */
export function uiConfig() {
  if (!configPromise) {
    configPromise = fetch('/ui-config.json', { credentials: 'same-origin', cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : {}))
      .catch(() => ({}))
      .then((c) => ({ basemap_url: (c && c.basemap_url) || null, basemap_attribution: (c && c.basemap_attribution) || '' }));
  }
  return configPromise;
}

function leaflet() {
  if (!window.L) throw new Error('The map library did not load.');
  return window.L;
}

const GRATICULE_STEPS = [30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001];

function stepLabel(v, step) {
  const decimals = Math.max(0, Math.ceil(-Math.log10(step)));
  return v.toFixed(decimals);
}

/** Lines of latitude/longitude at a spacing suited to the zoom, with labels. */
function makeGraticule(L) {
  const Graticule = L.LayerGroup.extend({
    onAdd(map) {
      L.LayerGroup.prototype.onAdd.call(this, map);
      this._gmap = map;
      map.on('moveend', this._redraw, this);
      this._redraw();
    },
    onRemove(map) {
      map.off('moveend', this._redraw, this);
      L.LayerGroup.prototype.onRemove.call(this, map);
    },
    _redraw() {
      const map = this._gmap;
      if (!map) return;
      this.clearLayers();
      const view = map.getBounds();
      const b = view.pad(0.25);
      const south = Math.max(-85, b.getSouth());
      const north = Math.min(85, b.getNorth());
      const west = Math.max(-540, b.getWest());
      const east = Math.min(540, b.getEast());
      const span = Math.max(north - south, east - west);
      let step = GRATICULE_STEPS[GRATICULE_STEPS.length - 1];
      for (const s of GRATICULE_STEPS) {
        if (span / s >= 4) { step = s; break; }
      }
      const opts = { className: 'graticule-line', interactive: false, weight: 1, color: '#b9b3a6', opacity: 0.8 };
      let n = 0;
      const labelLon = view.getWest() + (view.getEast() - view.getWest()) * 0.01;
      // Longitude labels along the top edge (the scale bar sits at the bottom).
      const labelLat = view.getNorth() - (view.getNorth() - view.getSouth()) * 0.01;
      for (let lat = Math.ceil(south / step) * step; lat <= north && n < 200; lat += step, n++) {
        this.addLayer(L.polyline([[lat, west], [lat, east]], opts));
        if (lat > view.getSouth() && lat < view.getNorth()) this._label([lat, labelLon], `${stepLabel(Math.abs(lat), step)}°${lat >= 0 ? 'N' : 'S'}`);
      }
      n = 0;
      for (let lon = Math.ceil(west / step) * step; lon <= east && n < 200; lon += step, n++) {
        this.addLayer(L.polyline([[south, lon], [north, lon]], opts));
        if (lon > view.getWest() && lon < view.getEast()) {
          const wrapped = ((lon + 540) % 360) - 180;
          this._label([labelLat, lon], `${stepLabel(Math.abs(wrapped), step)}°${wrapped >= 0 ? 'E' : 'W'}`);
        }
      }
    },
    _label(latlng, text) {
      const el = h('span', { text });
      this.addLayer(L.marker(latlng, {
        icon: L.divIcon({ className: 'graticule-label', html: el, iconSize: null }),
        interactive: false,
        keyboard: false,
      }));
    },
  });
  return new Graticule();
}

/**
 * Creates a map in `container`. `description` becomes its accessible name
 * (the text alternative is the table the caller renders beside it).
 * Returns {map, L, dispose(), fit(layers)}.
 */
export async function createMap(container, description) {
  const cfg = await uiConfig();
  const L = leaflet();
  container.setAttribute('role', 'region');
  container.setAttribute('aria-label', description || 'Map');
  const map = L.map(container, {
    minZoom: 1,
    maxZoom: 19,
    zoomSnap: 0.5,
    attributionControl: Boolean(cfg.basemap_url),
    worldCopyJump: false,
    // No animated zoom or fades: fitting to evidence is instant (nothing is
    // ever drawn mid-transition), and a page left during a transition
    // cannot leave Leaflet finishing it on a removed map.
    zoomAnimation: false,
    fadeAnimation: false,
    markerZoomAnimation: false,
  });
  if (cfg.basemap_url) {
    L.tileLayer(cfg.basemap_url, { maxZoom: 19, attribution: cfg.basemap_attribution || '' }).addTo(map);
    if (map.attributionControl) map.attributionControl.setPrefix(false);
  } else {
    container.classList.add('no-basemap');
    makeGraticule(L).addTo(map);
  }
  L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);
  map.setView([20, 0], 2);

  // The container may have been laid out after creation (grid, route change).
  const ro = typeof ResizeObserver === 'function' ? new ResizeObserver(() => map.invalidateSize()) : null;
  if (ro) ro.observe(container);

  return {
    map,
    L,
    dispose() {
      if (ro) ro.disconnect();
      map.stop();
      map.remove();
    },
    fit(layers, opts = {}) {
      fitLayers(map, L, layers, opts);
    },
  };
}

export function fitLayers(map, L, layers, { maxZoom = 18, padding = 24 } = {}) {
  let bounds = null;
  for (const layer of layers.flat()) {
    if (!layer) continue;
    let b = null;
    if (typeof layer.getBounds === 'function') {
      try { b = layer.getBounds(); } catch (_) { b = null; }
    } else if (typeof layer.getLatLng === 'function') {
      const ll = layer.getLatLng();
      b = L.latLngBounds(ll, ll);
    }
    if (b && b.isValid()) bounds = bounds ? bounds.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
  }
  if (bounds) {
    map.invalidateSize();
    map.fitBounds(bounds, { padding: [padding, padding], maxZoom });
  }
  return bounds;
}

/** Tooltip content as an element (no HTML parsing of API text). */
export function tip(lines) {
  const el = h('div', { class: 'map-tip' });
  for (const line of lines.filter(Boolean)) el.append(h('div', { text: line }));
  return el;
}

const ROLE_COLOURS = { exclusion: '#b3261e', inclusion: '#1b7f3b', home: '#1f5fbf' };

function metresPerPixel(map, lat) {
  return (40075016.686 * Math.abs(Math.cos((lat * Math.PI) / 180))) / 2 ** (map.getZoom() + 8);
}

/**
 * A zone as a layer with class `zone-layer`: accepts a GeoJSON Feature
 * (with radius_m / width_m properties), FeatureCollection or bare geometry.
 * Polygons and MultiPolygons as areas, Point + radius_m as a circle,
 * LineString + width_m as a corridor of that width.
 */
export function zoneLayer(L, map, geo, { role, name, extraClass } = {}) {
  const group = L.featureGroup();
  const colour = ROLE_COLOURS[role] || '#6b4fbb';
  const cls = ['zone-layer', role ? `zone-role-${role}` : '', extraClass || ''].filter(Boolean).join(' ');
  const base = { className: cls, color: colour, weight: 2, fillColor: colour, fillOpacity: 0.15 };
  const label = tip([name ? `Zone: ${name}` : 'Zone', role ? `Rule: ${role}` : '']);

  const addGeometry = (geom, props = {}) => {
    if (!geom || typeof geom !== 'object') return;
    const c = geom.coordinates;
    switch (geom.type) {
      case 'Polygon':
        group.addLayer(L.polygon(L.GeoJSON.coordsToLatLngs(c, 1), base));
        break;
      case 'MultiPolygon':
        group.addLayer(L.polygon(L.GeoJSON.coordsToLatLngs(c, 2), base));
        break;
      case 'Point': {
        const ll = L.GeoJSON.coordsToLatLng(c);
        const r = Number(props.radius_m);
        if (r > 0) group.addLayer(L.circle(ll, { ...base, radius: r }));
        else group.addLayer(L.circleMarker(ll, { ...base, radius: 8 }));
        break;
      }
      case 'LineString':
      case 'MultiLineString': {
        const lls = L.GeoJSON.coordsToLatLngs(c, geom.type === 'LineString' ? 0 : 1);
        const width = Number(props.width_m);
        if (width > 0) {
          const corridor = L.polyline(lls, { ...base, weight: 4, opacity: 0.25, lineCap: 'round', lineJoin: 'round', className: `${cls} zone-corridor` });
          const resize = () => {
            const center = corridor.getBounds().getCenter();
            corridor.setStyle({ weight: Math.max(2, Math.min(4000, width / metresPerPixel(map, center.lat))) });
          };
          corridor.on('add', () => { map.on('zoomend', resize); resize(); });
          corridor.on('remove', () => map.off('zoomend', resize));
          group.addLayer(corridor);
        }
        group.addLayer(L.polyline(lls, { ...base, weight: 2, dashArray: '6 4' }));
        break;
      }
      case 'GeometryCollection':
        for (const g of geom.geometries || []) addGeometry(g, props);
        break;
      default:
        break;
    }
  };

  if (geo && geo.type === 'Feature') addGeometry(geo.geometry, geo.properties || {});
  else if (geo && geo.type === 'FeatureCollection') for (const f of geo.features || []) addGeometry(f && f.geometry, (f && f.properties) || {});
  else addGeometry(geo, {});
  group.bindTooltip(label, { sticky: true });
  return group;
}

/** Evidence fixes: accuracy circles (radius acc_m) and points, class `evidence-layer`. */
export function evidenceLayer(L, evidence, describe) {
  const group = L.featureGroup();
  evidence.forEach((e, i) => {
    if (e.lat === null || e.lat === undefined || e.lon === null || e.lon === undefined) return;
    const ll = [e.lat, e.lon];
    if (e.acc_m > 0) {
      group.addLayer(L.circle(ll, {
        radius: e.acc_m, className: 'evidence-layer evidence-accuracy', color: '#c25e00', weight: 1, fillColor: '#f29d38', fillOpacity: 0.15, interactive: false,
      }));
    }
    const m = L.circleMarker(ll, {
      radius: 6, className: 'evidence-layer evidence-point', color: '#7a3b00', weight: 2, fillColor: '#f29d38', fillOpacity: 0.95,
    });
    m.bindTooltip(tip(describe(e, i)));
    group.addLayer(m);
  });
  return group;
}

/** A track polyline, class `track-layer`, with start and end dots. */
export function trackLayer(L, fixes) {
  const group = L.featureGroup();
  const lls = fixes.map((f) => [f.lat, f.lon]);
  if (lls.length === 0) return group;
  group.addLayer(L.polyline(lls, { className: 'track-layer', color: '#3a3a8c', weight: 3, opacity: 0.8 }));
  const s = L.circleMarker(lls[0], { className: 'track-layer track-start', radius: 4, color: '#3a3a8c', fillColor: '#ffffff', fillOpacity: 1, weight: 2 });
  s.bindTooltip(tip(['Track start']));
  const e = L.circleMarker(lls[lls.length - 1], { className: 'track-layer track-end', radius: 4, color: '#3a3a8c', fillColor: '#3a3a8c', fillOpacity: 1, weight: 2 });
  e.bindTooltip(tip(['Track end']));
  group.addLayer(s);
  group.addLayer(e);
  return group;
}

/** A position with its accuracy circle. */
export function positionLayer(L, lat, lon, accM, lines, cls = 'position-layer') {
  const group = L.featureGroup();
  if (accM > 0) group.addLayer(L.circle([lat, lon], { radius: accM, className: `${cls} position-accuracy`, color: '#1f5fbf', weight: 1, fillOpacity: 0.12, interactive: false }));
  const m = L.circleMarker([lat, lon], { radius: 7, className: `${cls} position-point`, color: '#0b2e66', weight: 2, fillColor: '#1f5fbf', fillOpacity: 1 });
  m.bindTooltip(tip(lines));
  group.addLayer(m);
  return group;
}

/** A small legend control (text only). */
export function legend(L, items) {
  const Legend = L.Control.extend({
    options: { position: 'bottomright' },
    onAdd() {
      const box = h('div', { class: 'map-legend', 'aria-hidden': 'true' });
      for (const [cls, text] of items) box.append(h('div', { class: 'legend-row' }, h('span', { class: `legend-swatch ${cls}` }), h('span', { text })));
      L.DomEvent.disableClickPropagation(box);
      return box;
    },
  });
  return new Legend();
}

export { fmtMetres };
