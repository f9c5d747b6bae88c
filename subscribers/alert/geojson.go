package alert

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrNoPolygon is wrapped by ParseGeoJSON when the document holds no
// polygon (or no feature of the requested name).
var ErrNoPolygon = errors.New("no polygon")

// geoObject is any GeoJSON object; only the members this package reads.
type geoObject struct {
	Type        string          `json:"type"`
	Coordinates json.RawMessage `json:"coordinates"`
	Geometry    *geoObject      `json:"geometry"`
	Geometries  []geoObject     `json:"geometries"`
	Features    []geoObject     `json:"features"`
	Properties  map[string]any  `json:"properties"`
	ID          any             `json:"id"`
}

// ParseGeoJSON returns the polygons of a GeoJSON document (RFC 7946): a
// Polygon, a MultiPolygon, a GeometryCollection, a Feature or a
// FeatureCollection of them, in NewPolygon's form. Geometries that are not
// polygonal (points, lines) are skipped. When feature is not empty only the
// features whose "id", or property "name" or "id", equals it (case
// insensitive) are used. Positions may carry a third (altitude) number.
func ParseGeoJSON(data []byte, feature string) ([][][][2]float64, error) {
	var root geoObject
	if err := json.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("geojson: %w", err)
	}
	var out [][][][2]float64
	if err := collect(&root, feature, feature == "", &out); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		if feature != "" {
			return nil, fmt.Errorf("geojson: %w: no polygonal feature named %q", ErrNoPolygon, feature)
		}
		return nil, fmt.Errorf("geojson: %w in the document", ErrNoPolygon)
	}
	return out, nil
}

// collect appends the polygons of o; selected says whether o is inside a
// feature that matched (or no feature was asked for).
func collect(o *geoObject, feature string, selected bool, out *[][][][2]float64) error {
	switch o.Type {
	case "FeatureCollection":
		for i := range o.Features {
			if err := collect(&o.Features[i], feature, selected, out); err != nil {
				return fmt.Errorf("feature %d: %w", i, err)
			}
		}
	case "Feature":
		if !selected && !featureMatches(o, feature) {
			return nil
		}
		if o.Geometry == nil {
			return nil
		}
		return collect(o.Geometry, feature, true, out)
	case "GeometryCollection":
		if !selected {
			return nil
		}
		for i := range o.Geometries {
			if err := collect(&o.Geometries[i], feature, true, out); err != nil {
				return fmt.Errorf("geometry %d: %w", i, err)
			}
		}
	case "Polygon":
		if !selected {
			return nil
		}
		var rings [][][]float64
		if err := json.Unmarshal(o.Coordinates, &rings); err != nil {
			return fmt.Errorf("geojson Polygon coordinates: %w", err)
		}
		p, err := toRings(rings)
		if err != nil {
			return err
		}
		*out = append(*out, p)
	case "MultiPolygon":
		if !selected {
			return nil
		}
		var polys [][][][]float64
		if err := json.Unmarshal(o.Coordinates, &polys); err != nil {
			return fmt.Errorf("geojson MultiPolygon coordinates: %w", err)
		}
		for i, rings := range polys {
			p, err := toRings(rings)
			if err != nil {
				return fmt.Errorf("polygon %d: %w", i, err)
			}
			*out = append(*out, p)
		}
	case "Point", "MultiPoint", "LineString", "MultiLineString":
		// not a zone
	default:
		return fmt.Errorf("geojson: unknown type %q", o.Type)
	}
	return nil
}

func featureMatches(o *geoObject, name string) bool {
	eq := func(v any) bool {
		switch x := v.(type) {
		case string:
			return strings.EqualFold(x, name)
		case float64:
			return fmt.Sprint(x) == name
		}
		return false
	}
	return eq(o.ID) || eq(o.Properties["name"]) || eq(o.Properties["id"])
}

func toRings(rings [][][]float64) ([][][2]float64, error) {
	out := make([][][2]float64, len(rings))
	for i, r := range rings {
		out[i] = make([][2]float64, len(r))
		for j, pos := range r {
			if len(pos) < 2 {
				return nil, fmt.Errorf("geojson: ring %d position %d has %d numbers, want [lon, lat]", i, j, len(pos))
			}
			out[i][j] = [2]float64{pos[0], pos[1]}
		}
	}
	return out, nil
}
