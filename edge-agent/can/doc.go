// Package can is the edge agent's CAN bus source: it decodes classic CAN
// frames with a DBC file, reads them from `candump -L` logs or a live
// SocketCAN interface, keeps the signals a collection config selects (every
// frame, minimum interval, on change, deadband, with an optional heartbeat)
// and emits them as wire readings named "MESSAGE.SIGNAL".
//
// Decoding follows the DBC exactly: a signal's raw value is the bit field the
// DBC names (Intel or Motorola byte order, signed or unsigned, multiplexed
// signals only when the multiplexer switch has their value), and its
// physical value is float64(raw)*factor + offset, rounded after each
// operation (never fused into one FMA, so arm64 agents agree with amd64
// ones and with other decoders). Values are not clamped to the DBC's
// [min|max]. Signals with factor 1, offset 0 and an integer type become
// wire.Int readings of the raw value; all others wire.Float readings.
//
// Frames whose ID is not in the DBC, whose length differs from the DBC's,
// remote frames, error frames and CAN FD frames are skipped and counted by
// reason; so are unparsable log lines. Nothing in the input is fatal except
// failing to open or read it.
//
// Metrics, registered on the Registerer in Deps:
//
//	fleet_agent_can_frames_total{result}   frames (and bad log lines) by result:
//	                                       decoded, unknown_id, dlc_mismatch, remote,
//	                                       error_frame, can_fd, bad_line
//	fleet_agent_can_readings_total{result} decoded signal values: collected, or
//	                                       dropped by not_selected, interval,
//	                                       change, deadband
package can
