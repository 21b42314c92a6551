// Package gps reads the vehicle's position from a GNSS receiver and turns
// it into wire.Fix records: raw NMEA 0183 from a serial device or a log file
// (NMEASource, built on Decoder), or gpsd's JSON protocol over TCP
// (GPSDSource). New builds the one a Config describes; both implement
// Source, whose Run returns when its context is cancelled.
//
// Units follow wire.Fix: degrees WGS84, altitude in metres above mean sea
// level, speed in m/s, heading in degrees from true north, horizontal
// accuracy in metres at one sigma; a field the receiver did not report is
// NaN. NMEA accuracy is GGA's HDOP times Config.UERE (DefaultUERE, 5 m);
// gpsd's eph is halved (its figures are nominally 95% confidence).
//
// Metrics (registered on Deps.Registerer):
//
//	fleet_agent_gps_sentences_total{result="ok|ignored|bad_checksum|no_checksum|malformed"}
//	fleet_agent_gps_fixes_total
//	fleet_agent_gps_epochs_dropped_total{reason="no_fix|no_position|no_time|duplicate"}
//	fleet_agent_gps_reconnects_total
package gps
