function [baseMVA, bus, gen, branch] = case3_v1
% case3_v1 - three buses, MATPOWER case format version 1 (bare variables, no mpc struct).
% Written for the gridtwin tests; the same grid as case3_v2.m.

%% MATPOWER Case Format : Version 1
baseMVA = 100;

%% bus data
%	bus_i	type	Pd	Qd	Gs	Bs	area	Vm	Va	baseKV	zone	Vmax	Vmin
bus = [
	1	3	0	0	0	0	1	1.02	0	110	1	1.1	0.9;
	2	1	40	10	0	0	1	1	0	110	1	1.1	0.9;
	30	2	20	5	0	0	1	1.01	0	110	1	1.1	0.9;
];

%% generator data
%	bus	Pg	Qg	Qmax	Qmin	Vg	mBase	status	Pmax	Pmin
gen = [
	1	0	0	100	-100	1.02	100	1	200	0;
	30	30	0	50	-50	1.01	100	1	60	0;
];

%% branch data
%	fbus	tbus	r	x	b	rateA	rateB	rateC	ratio	angle	status
branch = [
	1	2	0.01	0.05	0.02	100	100	100	0	0	1;
	2	30	0.01	0.05	0.02	100	100	100	0	0	1;
	1	30	0.02	0.08	0.03	100	100	100	0	0	1;
];

return;
